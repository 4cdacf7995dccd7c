"""The access audit log (``models.AccessEvent``): one row per upload, view, download,
delete, queued job, share and unshare, and per purge of old events of the log itself.
Ids and counts only, never a scan's or a file's name (they can hold a patient's name)."""

from __future__ import annotations

import ipaddress

from django.http import HttpRequest

from webapp.delineation.models import AccessEvent, Job, Patient, Scan

_TYPES = {Job: AccessEvent.ObjectType.JOB, Scan: AccessEvent.ObjectType.SCAN, Patient: AccessEvent.ObjectType.PATIENT}


def client_ip(request: HttpRequest | None) -> str | None:
    """The address the request came from (``REMOTE_ADDR``: behind a reverse proxy, the proxy's)."""
    if request is None:
        return None
    address = request.META.get("REMOTE_ADDR", "")
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def record(
    request: HttpRequest | None, action: str, obj: Scan | Job | Patient, filename: str = "", team: str = ""
) -> AccessEvent:
    """Record ``action`` on a scan, job or patient by the request's user; ``request=None``: by the system.
    ``team``: the team's name for a share or unshare."""
    user = getattr(request, "user", None)
    if user is not None and not user.is_authenticated:
        user = None
    return AccessEvent.objects.create(
        user=user,
        username=user.get_username() if user is not None else "",
        action=action,
        object_type=_TYPES[type(obj)],
        object_id=obj.pk,
        object_owner_id=obj.owner_id,
        filename=filename,
        team=team,
        client_ip=client_ip(request),
    )


def record_purge(count: int) -> AccessEvent:
    """Record that the retention purge (by the system) deleted ``count`` events of this log."""
    return AccessEvent.objects.create(
        action=AccessEvent.Action.PURGE, object_type=AccessEvent.ObjectType.AUDIT_LOG, count=count
    )
