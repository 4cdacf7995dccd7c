"""The access log (``models.AccessEvent``): one row per upload, view, download,
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
        action=AccessEvent.Action.PURGE, object_type=AccessEvent.ObjectType.ACCESS_LOG, count=count
    )


def record_dicom_rejected(calling_ae: str, address: str) -> AccessEvent:
    """Record an association the DICOM node rejected: the calling AE title and address only."""
    return AccessEvent.objects.create(
        action=AccessEvent.Action.DICOM_REJECTED,
        object_type=AccessEvent.ObjectType.DICOM_NODE,
        calling_ae=calling_ae[:16],
        client_ip=_address(address),
    )


def record_dicom_upload(peer, scan: Scan, address: str = "") -> AccessEvent:  # noqa: ANN001 (a DicomPeer)
    """Record a scan received from a DICOM peer: an upload by the system on behalf of the peer's owner."""
    return AccessEvent.objects.create(
        username=f"dicom:{peer.name}"[:150],
        action=AccessEvent.Action.UPLOAD,
        object_type=AccessEvent.ObjectType.SCAN,
        object_id=scan.pk,
        object_owner_id=scan.owner_id,
        calling_ae=peer.ae_title,
        client_ip=_address(address),
    )


def _address(address: str) -> str | None:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None
