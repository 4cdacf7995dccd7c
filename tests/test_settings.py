"""Settings come from environment variables, with embedded defaults; bad values fail loudly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from webapp.env import env_bool, env_bytes, env_int, env_list, env_str

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import json
from django.conf import settings
db = settings.DATABASES["default"]
print(json.dumps({
    "DEBUG": settings.DEBUG,
    "ALLOWED_HOSTS": settings.ALLOWED_HOSTS,
    "DB_ENGINE": db["ENGINE"], "DB_NAME": str(db["NAME"]), "DB_HOST": db.get("HOST", ""),
    "BROKER": settings.CELERY_BROKER_URL, "RESULT": settings.CELERY_RESULT_BACKEND,
    "MEDIA_ROOT": str(settings.MEDIA_ROOT), "MAX_UPLOAD": settings.DELINEO_MAX_UPLOAD_BYTES,
    "ACKS_LATE": settings.CELERY_TASK_ACKS_LATE,
}))
"""

VARIABLES = (
    "DJANGO_ENV",
    "DEBUG",
    "SECRET_KEY",
    "ALLOWED_HOSTS",
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "MEDIA_ROOT",
    "DELINEO_MAX_UPLOAD_BYTES",
    "DELINEO_MAX_UPLOAD_FILES",
    "DELINEO_LOGIN_RATE",
    "DELINEO_LOGIN_USERNAME_RATE",
)


def load_settings(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    clean.update(env, DJANGO_SETTINGS_MODULE="webapp.settings")
    return subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=clean, capture_output=True, text=True, timeout=120
    )


def settings_with(**env: str) -> dict:
    result = load_settings(**env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_embedded_defaults():
    s = settings_with()
    assert s["DEBUG"] is True
    assert s["DB_ENGINE"] == "django.db.backends.sqlite3"
    assert s["DB_NAME"] == str(REPO / "var" / "db.sqlite3")
    assert s["BROKER"] == f"sqla+sqlite:///{REPO / 'var' / 'celery-broker.sqlite3'}"
    assert s["RESULT"] is None
    assert s["MEDIA_ROOT"] == str(REPO / "var" / "media")
    assert s["MAX_UPLOAD"] == 2 << 30
    assert s["ACKS_LATE"] is True


def test_postgresql_redis_and_media_from_environment(tmp_path):
    s = settings_with(
        DATABASE_URL="postgres://delineo:pw@db.example:5432/delineo",
        CELERY_BROKER_URL="redis://redis.example:6379/0",
        MEDIA_ROOT=str(tmp_path),
        DEBUG="false",
        SECRET_KEY="x" * 50,
        ALLOWED_HOSTS="delineo.hospital.example, 10.0.0.5",
        DELINEO_MAX_UPLOAD_BYTES="512M",
    )
    assert s["DB_ENGINE"] == "django.db.backends.postgresql"
    assert (s["DB_HOST"], s["DB_NAME"]) == ("db.example", "delineo")
    assert s["BROKER"] == "redis://redis.example:6379/0"
    assert s["MEDIA_ROOT"] == str(tmp_path)
    assert s["DEBUG"] is False
    assert s["ALLOWED_HOSTS"] == ["delineo.hospital.example", "10.0.0.5"]
    assert s["MAX_UPLOAD"] == 512 << 20


@pytest.mark.parametrize(
    "env,message",
    [
        ({"DEBUG": "maybe"}, "DEBUG='maybe' is not a boolean"),
        ({"DEBUG": "false"}, "SECRET_KEY must be set"),
        ({"DATABASE_URL": "mongodb://x/y"}, "DATABASE_URL"),
        ({"DELINEO_MAX_UPLOAD_BYTES": "lots"}, "DELINEO_MAX_UPLOAD_BYTES='lots' is not a size"),
        ({"DELINEO_MAX_UPLOAD_FILES": "0"}, "DELINEO_MAX_UPLOAD_FILES=0 is below the minimum"),
        ({"DELINEO_LOGIN_RATE": "ten"}, "DELINEO_LOGIN_RATE='ten' is not a rate"),
        ({"DELINEO_LOGIN_USERNAME_RATE": "5/fortnight"}, "DELINEO_LOGIN_USERNAME_RATE='5/fortnight' is not a rate"),
    ],
)
def test_bad_values_fail_loudly(env, message):
    result = load_settings(**env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr, result.stderr


def test_env_helpers():
    env = {"A": "yes", "B": "Off", "N": "42", "L": "a, b,,c", "S": "  text ", "E": "", "Z": "2G", "K": "10k"}
    assert env_bool("A", False, env) is True and env_bool("B", True, env) is False
    assert env_bool("MISSING", True, env) is True and env_bool("E", False, env) is False
    assert env_int("N", 0, env) == 42 and env_int("MISSING", 7, env) == 7
    assert env_list("L", [], env) == ["a", "b", "c"]
    assert env_str("S", "", env) == "text" and env_str("E", "default", env) == "default"
    assert env_bytes("Z", 0, env) == 2 << 30 and env_bytes("K", 0, env) == 10 << 10
    with pytest.raises(ImproperlyConfigured, match="N=42 is below the minimum of 100"):
        env_int("N", 0, env, minimum=100)
    with pytest.raises(ImproperlyConfigured, match="is not an integer"):
        env_int("S", 0, env)
