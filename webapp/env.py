"""Typed readers for settings that come from environment variables.

Each helper returns the embedded default when the variable is unset (or empty) and
raises ``ImproperlyConfigured`` naming the variable and the bad value otherwise, so a
typo in a deployment fails at start-up instead of silently falling back to a default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _raw(name: str, environ: Mapping[str, str] | None) -> str | None:
    value = (os.environ if environ is None else environ).get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def env_str(name: str, default: str, environ: Mapping[str, str] | None = None) -> str:
    value = _raw(name, environ)
    return default if value is None else value


def env_bool(name: str, default: bool, environ: Mapping[str, str] | None = None) -> bool:
    value = _raw(name, environ)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean; use one of: true, false, 1, 0, yes, no, on, off")


def env_int(
    name: str,
    default: int,
    environ: Mapping[str, str] | None = None,
    minimum: int | None = None,
) -> int:
    value = _raw(name, environ)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} is below the minimum of {minimum}")
    return number


def env_list(name: str, default: list[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """A comma-separated list; blank items are dropped."""
    value = _raw(name, environ)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_bytes(name: str, default: int, environ: Mapping[str, str] | None = None) -> int:
    """A size in bytes, with an optional K, M, G or T suffix (powers of 1024): ``512M``, ``2G``."""
    value = _raw(name, environ)
    if value is None:
        return default
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = value.upper().removesuffix("B").removesuffix("I")
    factor = 1
    if text and text[-1] in units:
        factor, text = units[text[-1]], text[:-1]
    try:
        number = int(text)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a size; write bytes or e.g. 512M, 2G") from None
    if number <= 0:
        raise ImproperlyConfigured(f"{name}={value!r} must be positive")
    return number * factor


def env_choice(name: str, default: str, choices: Collection[str], environ: Mapping[str, str] | None = None) -> str:
    """One of ``choices`` (compared in lower case)."""
    value = _raw(name, environ)
    if value is None:
        return default
    if value.lower() not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} is not one of: {', '.join(choices)}")
    return value.lower()


# What Django's check --deploy (security.W009) calls a strong secret key.
SECRET_KEY_MIN_LENGTH = 50
SECRET_KEY_MIN_UNIQUE = 5
KEY_ADVICE = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(64))'"


def check_production(
    *,
    debug: bool,
    secret_key: str,
    insecure_keys: Collection[str],
    allowed_hosts: Collection[str],
    session_cookie_secure: bool,
    csrf_cookie_secure: bool,
) -> None:
    """Refuse settings that are unsafe on a server other people can reach (``DJANGO_ENV=production``).

    Raises:
        ImproperlyConfigured: naming the first unsafe setting and what to do instead. The
            secret key itself is never part of the message.
    """
    where = "with DJANGO_ENV=production"
    if debug:
        raise ImproperlyConfigured(
            f"DEBUG must be false {where}: debug pages show the settings and the data of a failing request."
        )
    if not secret_key or secret_key in insecure_keys:
        raise ImproperlyConfigured(f"SECRET_KEY must be set {where} (not the development default); {KEY_ADVICE}")
    unique = len(set(secret_key))
    if (
        len(secret_key) < SECRET_KEY_MIN_LENGTH
        or unique < SECRET_KEY_MIN_UNIQUE
        or secret_key.startswith("django-insecure-")
    ):
        raise ImproperlyConfigured(
            f"SECRET_KEY is too weak {where}: it has {len(secret_key)} characters ({unique} different); "
            f"use at least {SECRET_KEY_MIN_LENGTH} random characters; {KEY_ADVICE}"
        )
    if not allowed_hosts or "*" in allowed_hosts:
        raise ImproperlyConfigured(
            f"ALLOWED_HOSTS must list the host names of this server {where} (not empty, not '*'), "
            "e.g. ALLOWED_HOSTS=delineo.hospital.example"
        )
    for name, secure in (("SESSION_COOKIE_SECURE", session_cookie_secure), ("CSRF_COOKIE_SECURE", csrf_cookie_secure)):
        if not secure:
            raise ImproperlyConfigured(
                f"{name} must be true {where}: login and CSRF cookies are sent over HTTPS only. "
                "For a plain-HTTP test install leave DJANGO_ENV unset."
            )


_RATE = re.compile(r"^[1-9][0-9]*/(s|sec|second|m|min|minute|h|hour|d|day)$")


def env_rate(name: str, default: str, environ: Mapping[str, str] | None = None) -> str:
    """A request rate as DRF's throttles read it: ``10/min``, ``30/hour``, ``5/s``, ``100/day``."""
    value = _raw(name, environ)
    if value is None:
        return default
    if not _RATE.match(value):
        raise ImproperlyConfigured(f"{name}={value!r} is not a rate such as 10/min, 30/hour or 100/day")
    return value
