"""DJANGO_ENV=production refuses to start with unsafe settings, turns on HTTPS-only
cookies, HSTS and the redirect to HTTPS, and passes `manage.py check --deploy`."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import override_settings

REPO = Path(__file__).resolve().parent.parent
STRONG_KEY = secrets.token_urlsafe(64)

PROBE = """
import json
from django.conf import settings as s
print(json.dumps({name: getattr(s, name) for name in (
    "DEBUG", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD", "SECURE_PROXY_SSL_HEADER", "SECURE_CONTENT_TYPE_NOSNIFF",
    "SECURE_REFERRER_POLICY", "X_FRAME_OPTIONS", "ALLOWED_HOSTS",
)}))
"""

# Every variable these settings read, removed from the test's own environment first.
SECURITY_VARIABLES = (
    "DJANGO_ENV",
    "DEBUG",
    "SECRET_KEY",
    "ALLOWED_HOSTS",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "BEHIND_TLS_PROXY",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
)


def run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in SECURITY_VARIABLES}
    clean.update(
        DJANGO_SETTINGS_MODULE="webapp.settings",
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        CELERY_BROKER_URL="memory://",
        MEDIA_ROOT=str(tmp_path / "media"),
    )
    clean.update(env)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=clean, capture_output=True, text=True, timeout=120)


def production(tmp_path: Path, args: list[str] | None = None, **env: str) -> subprocess.CompletedProcess:
    base = {"DJANGO_ENV": "production", "SECRET_KEY": STRONG_KEY, "ALLOWED_HOSTS": "delineo.hospital.example"}
    return run(args or ["-c", PROBE], tmp_path, **{**base, **env})


@pytest.mark.parametrize(
    "env,message",
    [
        ({"DEBUG": "true"}, "DEBUG must be false with DJANGO_ENV=production"),
        ({"SECRET_KEY": ""}, "SECRET_KEY must be set with DJANGO_ENV=production"),
        (
            {"SECRET_KEY": "dev-only-insecure-secret-key-change-me-in-production"},
            "SECRET_KEY must be set with DJANGO_ENV=production (not the development default)",
        ),
        ({"SECRET_KEY": "Short-Secret-1234"}, "SECRET_KEY is too weak with DJANGO_ENV=production"),
        ({"SECRET_KEY": "ab" * 40}, "SECRET_KEY is too weak"),  # 80 characters, 2 different
        ({"SECRET_KEY": "django-insecure-" + STRONG_KEY}, "SECRET_KEY is too weak"),
        ({"ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS must list the host names of this server"),
        ({"ALLOWED_HOSTS": "*"}, "ALLOWED_HOSTS must list the host names of this server"),
        ({"SESSION_COOKIE_SECURE": "false"}, "SESSION_COOKIE_SECURE must be true with DJANGO_ENV=production"),
        ({"CSRF_COOKIE_SECURE": "no"}, "CSRF_COOKIE_SECURE must be true with DJANGO_ENV=production"),
        ({"DJANGO_ENV": "prod"}, "DJANGO_ENV='prod' is not one of: development, production"),
    ],
)
def test_production_refuses_to_start(tmp_path, env, message):
    result = production(tmp_path, **env)
    assert result.returncode != 0, result.stdout
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr, result.stderr
    if env.get("SECRET_KEY"):
        assert env["SECRET_KEY"] not in result.stderr, "the message must not print the secret"


def test_production_refuses_to_serve_too(tmp_path):
    """The web server loads the same settings: it stops before answering anything."""
    result = production(tmp_path, ["-c", "import webapp.wsgi"], DEBUG="on")
    assert result.returncode != 0 and "DEBUG must be false" in result.stderr, result.stderr


def test_production_security_settings(tmp_path):
    result = production(tmp_path)
    assert result.returncode == 0, result.stderr
    s = json.loads(result.stdout)
    assert s["DEBUG"] is False
    assert s["SESSION_COOKIE_SECURE"] is True and s["CSRF_COOKIE_SECURE"] is True
    assert s["SECURE_SSL_REDIRECT"] is True and s["SECURE_PROXY_SSL_HEADER"] is None
    assert s["SECURE_HSTS_SECONDS"] >= 365 * 24 * 3600
    assert s["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True and s["SECURE_HSTS_PRELOAD"] is True
    assert s["SECURE_CONTENT_TYPE_NOSNIFF"] is True
    assert s["SECURE_REFERRER_POLICY"] == "same-origin" and s["X_FRAME_OPTIONS"] == "DENY"


def test_production_behind_a_tls_proxy(tmp_path):
    """TLS terminated by a reverse proxy that redirects itself: trust X-Forwarded-Proto, no redirect here."""
    s = json.loads(production(tmp_path, BEHIND_TLS_PROXY="true", SECURE_SSL_REDIRECT="false").stdout)
    assert s["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert s["SECURE_SSL_REDIRECT"] is False
    assert s["SESSION_COOKIE_SECURE"] is True and s["SECURE_HSTS_SECONDS"] > 0


def test_check_deploy_reports_nothing_in_production(tmp_path):
    result = production(tmp_path, ["manage.py", "check", "--deploy", "--fail-level", "WARNING"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_flags_development_settings(tmp_path):
    """The same check fails on the development defaults (so the test above can fail)."""
    result = run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], tmp_path)
    assert result.returncode != 0
    for code in ("W004", "W008", "W012", "W016", "W018"):  # HSTS, redirect, both cookies, DEBUG
        assert f"security.{code}" in result.stderr, result.stderr


def test_development_defaults_are_unchanged(tmp_path):
    """`make run`: DEBUG on, plain HTTP on localhost, no redirect, no HSTS, cookies over HTTP."""
    result = run(["-c", PROBE], tmp_path)
    assert result.returncode == 0, result.stderr
    s = json.loads(result.stdout)
    assert s["DEBUG"] is True and "127.0.0.1" in s["ALLOWED_HOSTS"]
    assert s["SECURE_SSL_REDIRECT"] is False and s["SECURE_HSTS_SECONDS"] == 0
    assert s["SESSION_COOKIE_SECURE"] is False and s["CSRF_COOKIE_SECURE"] is False


@override_settings(
    SECURE_SSL_REDIRECT=True,
    SECURE_HSTS_SECONDS=31536000,
    SECURE_HSTS_INCLUDE_SUBDOMAINS=True,
    SECURE_HSTS_PRELOAD=True,
)
def test_https_redirect_and_hsts_headers(client):
    """The settings reach the responses: http is redirected, https carries HSTS and the other headers."""
    response = client.get("/accounts/login/")
    assert response.status_code == 301 and response["Location"] == "https://testserver/accounts/login/"
    response = client.get("/accounts/login/", secure=True)
    assert response.status_code == 200
    assert response["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
