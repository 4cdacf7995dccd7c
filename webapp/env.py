"""Typed readers for settings that come from environment variables.

Each helper returns the embedded default when the variable is unset (or empty) and
raises ``ImproperlyConfigured`` naming the variable and the bad value otherwise, so a
typo in a deployment fails at start-up instead of silently falling back to a default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

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
