"""DICOM over TLS (PS3.15 Annex B, the "Basic TLS Secure Transport Connection Profile"), with
the standard library's ``ssl`` and pynetdicom's TLS support.

With ``DICOM_NODE_TLS_CERT`` and ``DICOM_NODE_TLS_KEY`` the node accepts TLS connections
only; with ``DICOM_NODE_TLS_CA`` too, every peer must present a certificate signed by that
CA (mutual TLS), on top of the AE title and address checks. When sending to a peer marked
``tls``, the node verifies the peer's certificate against ``DICOM_NODE_TLS_CA`` (else the
system's CAs) and the peer's host name, and presents its own certificate.
"""

from __future__ import annotations

import ssl

from django.conf import settings


def server_context() -> ssl.SSLContext | None:
    """The node's TLS context, or None for plain TCP (no certificate configured)."""
    if not settings.DICOM_NODE_TLS_CERT:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.DICOM_NODE_TLS_CERT, settings.DICOM_NODE_TLS_KEY)
    if settings.DICOM_NODE_TLS_CA:
        context.load_verify_locations(settings.DICOM_NODE_TLS_CA)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context() -> ssl.SSLContext:
    """The context for associations the node opens to a TLS peer."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.DICOM_NODE_TLS_CA or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.DICOM_NODE_TLS_CERT:
        context.load_cert_chain(settings.DICOM_NODE_TLS_CERT, settings.DICOM_NODE_TLS_KEY)
    return context
