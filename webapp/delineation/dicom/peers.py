"""Which calling AE titles may associate with the node (``DicomPeer``), and from where.

An AE title is only a name the caller gives itself, so by default the association must
also come from an address of the peer's configured host (``DICOM_NODE_CHECK_PEER_HOST``):
a machine elsewhere on the network cannot send as the CT scanner by borrowing its AE title.
"""

from __future__ import annotations

import logging
import socket

from django.conf import settings

from webapp.delineation import access_log
from webapp.delineation.dicom.models import DicomPeer

logger = logging.getLogger(__name__)


def addresses_of(host: str) -> set[str]:
    """The IP addresses ``host`` (a name or an address) resolves to; empty when it does not."""
    try:
        return {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError):
        return set()


def authorise(calling_ae: str, address: str) -> DicomPeer | None:
    """The peer allowed to associate as ``calling_ae`` from ``address``, or None; a refusal
    is written to the access log (AE title and address only)."""
    peer = DicomPeer.objects.select_related("owner").filter(ae_title=calling_ae).first()
    if peer is not None and settings.DICOM_NODE_CHECK_PEER_HOST and address not in addresses_of(peer.host):
        logger.warning("association as %r from %s refused: not an address of the peer's host", calling_ae, address)
        peer = None
    if peer is None:
        access_log.record_dicom_rejected(calling_ae, address)
    return peer
