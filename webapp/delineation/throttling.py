"""Limits on sign-in attempts (docs/security.md, "Sign-in attempts"): the API's token
endpoint and the login page share two DRF throttles, one per client address and one per
username, with the rates of ``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]``."""

from __future__ import annotations

import hashlib
import math

from django.contrib.auth.views import LoginView
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.exceptions import Throttled
from rest_framework.throttling import SimpleRateThrottle


def _minutes(wait: float | None) -> int:
    return max(1, math.ceil((wait or 60) / 60))


def too_many_attempts(wait: float | None) -> str:
    minutes = _minutes(wait)
    return (
        f"Too many sign-in attempts. Wait {minutes} minute{'s' if minutes > 1 else ''} and try again; "
        "if you forgot your password, ask the administrator to set a new one."
    )


class LoginAddressThrottle(SimpleRateThrottle):
    """Sign-in attempts from one client address (``REMOTE_ADDR``, or the proxy's
    ``X-Forwarded-For`` only behind a trusted proxy: ``NUM_PROXIES``)."""

    scope = "login"

    def get_cache_key(self, request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class LoginUsernameThrottle(SimpleRateThrottle):
    """Sign-in attempts for one username, from any address (the name is hashed, not kept)."""

    scope = "login_username"

    def get_cache_key(self, request, view) -> str | None:
        data = getattr(request, "data", None) or request.POST
        if not hasattr(data, "get"):
            return None  # a JSON list or value: the serializer refuses it with 400
        username = str(data.get("username") or "").strip().lower()
        if not username:
            return None  # nothing to count: the form refuses it anyway
        digest = hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()
        return self.cache_format % {"scope": self.scope, "ident": digest}


LOGIN_THROTTLES = (LoginAddressThrottle, LoginUsernameThrottle)


def _refused_wait(request) -> float | None:
    """None when the attempt may go on; else the seconds to wait. Every throttle counts it."""
    waits = [t.wait() for t in (cls() for cls in LOGIN_THROTTLES) if not t.allow_request(request, None)]
    return max((w or 60 for w in waits), default=None) if waits else None


class ThrottledObtainAuthToken(ObtainAuthToken):
    """``POST /api/auth/token/`` (DRF's token view) with the sign-in throttles."""

    throttle_classes = list(LOGIN_THROTTLES)

    def throttled(self, request, wait) -> None:
        raise Throttled(wait, detail=too_many_attempts(wait))


class ThrottledLoginView(LoginView):
    """The login page; a POST beyond the sign-in limits is refused with 429 and a message."""

    def post(self, request, *args, **kwargs):
        wait = _refused_wait(request)
        if wait is not None:
            form = self.get_form()
            context = self.get_context_data(form=form, throttled=too_many_attempts(wait))
            return self.render_to_response(context, status=429)
        return super().post(request, *args, **kwargs)
