"""Run the DICOM node: ``python manage.py dicom_node`` (``make run`` starts it beside the
web server and the worker). A Storage SCP on ``DICOM_NODE_HOST:DICOM_NODE_PORT`` with AE
title ``DICOM_NODE_AE_TITLE``; only configured peers (``manage.py dicom_peer``) may
associate. Stops cleanly on SIGINT or SIGTERM (what arrived is on disk already)."""

from __future__ import annotations

import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand

from webapp.delineation.dicom import tls
from webapp.delineation.dicom.assembly import Assembly
from webapp.delineation.dicom.models import DicomPeer
from webapp.delineation.dicom.scp import Node


class Command(BaseCommand):
    help = "Run the DICOM node (Storage SCP) that configured peers send scans to."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=settings.DICOM_NODE_HOST, help="Address to listen on.")
        parser.add_argument("--port", type=int, default=settings.DICOM_NODE_PORT, help="Port to listen on.")

    def handle(self, *args, host: str, port: int, **options) -> None:
        assembly = Assembly()
        assembly.recover()
        context = tls.server_context()
        node = Node(
            assembly, settings.DICOM_NODE_AE_TITLE, host, port, timeout_s=settings.DICOM_NETWORK_TIMEOUT_S,
            ssl_context=context,
        )  # fmt: skip
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        node.start(block=False)
        assembly.start()
        peers = DicomPeer.objects.count()
        self.stdout.write(
            f"DICOM node {settings.DICOM_NODE_AE_TITLE} listening on {host}:{node.bound_port}"
            f"{' (TLS only)' if context else ''}; "
            f"{peers} configured peer(s) (python manage.py dicom_peer list).",
        )
        self.stdout.flush()
        try:
            stop.wait()
        finally:
            node.stop()
            assembly.stop()
