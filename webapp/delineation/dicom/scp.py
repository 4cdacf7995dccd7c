"""The Storage SCP of the DICOM node (pynetdicom): ``manage.py dicom_node`` runs it.

Each association runs in a thread of its own (pynetdicom's threaded server). What to do
with a calling peer and with what it sends is the ``Receiver``'s decision: the SCP only
speaks DICOM. A handler never lets an exception through to pynetdicom: a bad object gets
a failure status, and the node goes on serving other associations.

Logs name the calling AE title and address, the SOP class and the status, never a value
of the dataset (Patient's Name, Patient ID, UIDs) nor its pixel data.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from django.db import connections
from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from webapp.delineation.dicom import conformance
from webapp.delineation.redact import traceback_without_messages

logger = logging.getLogger(__name__)

# After its connection closed, how long an association may take to report its release or abort.
_LATE_END_S = 5.0
# A-ASSOCIATE-RJ: rejected-permanent, by the service user, calling AE title not recognised.
_REJECT_CALLING_AE = (0x01, 0x01, 0x03)


class Receiver(Protocol):
    """Who may associate, and what happens to what they send (``assembly.Assembly``)."""

    def authorise(self, calling_ae: str, address: str) -> object | None:
        """The peer allowed to associate with this calling AE title from this address, or None."""

    def store(self, peer: object, association: int, dataset: Dataset, encoded: bytes) -> int:
        """Keep one object of an accepted SOP class; returns a C-STORE status."""

    def association_ended(self, peer: object, association: int, released: bool) -> None:
        """The association ended: released normally, or aborted (dropped)."""


def sop_class_name(uid: str) -> str:
    from pydicom.uid import UID

    return UID(uid).name or uid


class Node:
    """The SCP: an AE title, the address it listens on, and a ``Receiver``."""

    def __init__(
        self, receiver: Receiver, ae_title: str, host: str, port: int, timeout_s: float = 30, ssl_context=None
    ) -> None:
        self.receiver = receiver
        self.ssl_context = ssl_context  # TLS only when given (dicom/tls.py)
        self.ae = AE(ae_title=ae_title)
        self.ae.supported_contexts = conformance.supported_contexts()
        # A sender that stops mid-association is dropped after this long; what it sent stays.
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = timeout_s
        self.ae.maximum_pdu_size = 0  # no limit on what the peer may send per PDU
        self.host, self.port = host, port
        self._server = None
        # association (id of the pynetdicom object) -> the peer it was authorised as
        self._peers: dict[int, object] = {}

    def handlers(self) -> list:
        return [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]

    def start(self, block: bool = False):
        """Listen; ``block=False`` returns the server (``shutdown()`` stops it), else serves until interrupted."""
        logger.info("DICOM node %s listening on %s:%d%s", self.ae.ae_title, self.host, self.port,
                    " (TLS)" if self.ssl_context else "")  # fmt: skip
        self._server = self.ae.start_server(
            (self.host, self.port), block=block, evt_handlers=self.handlers(), ssl_context=self.ssl_context
        )
        return self._server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    @property
    def bound_port(self) -> int:
        return self._server.server_address[1] if self._server is not None else self.port

    # --- handlers (each in the association's thread) -------------------------------------

    def _on_requested(self, event) -> None:
        assoc = event.assoc
        calling = assoc.requestor.primitive.calling_ae_title.strip()
        address = assoc.requestor.address
        try:
            peer = self.receiver.authorise(calling, address)
        except Exception as exc:
            logger.error("checking calling AE title %r failed:\n%s", calling, traceback_without_messages(exc))
            peer = None
        if peer is None:
            logger.warning("association from %r at %s rejected: not a configured peer", calling, address)
            assoc.acse.send_reject(*_REJECT_CALLING_AE)
            evt.trigger(assoc, evt.EVT_REJECTED, {})
            assoc.kill()  # as pynetdicom does after its own rejections: waits until the A-ASSOCIATE-RJ is out
            connections.close_all()
            return
        self._peers[id(assoc)] = peer
        logger.info("association from %r at %s accepted", calling, address)

    def _on_store(self, event) -> int:
        sop_class = event.request.AffectedSOPClassUID
        peer = self._peers.get(id(event.assoc))
        if peer is None:  # cannot happen: the association was rejected
            return conformance.PROCESSING_FAILURE
        if sop_class not in conformance.ACCEPTED_SOP_CLASSES:
            logger.info("C-STORE of %s refused (SOP class not accepted)", sop_class_name(sop_class))
            return conformance.REFUSED_SOP_CLASS_NOT_SUPPORTED
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            encoded = event.encoded_dataset(include_meta=True)
        except Exception as exc:
            what = sop_class_name(sop_class)
            logger.warning("C-STORE of %s: the dataset cannot be decoded (%s)", what, type(exc).__name__)
            return conformance.CANNOT_UNDERSTAND
        try:
            return self.receiver.store(peer, id(event.assoc), dataset, encoded)
        except OSError as exc:
            logger.error("C-STORE could not be written:\n%s", traceback_without_messages(exc))
            return conformance.OUT_OF_RESOURCES
        except Exception as exc:
            logger.error("C-STORE failed:\n%s", traceback_without_messages(exc))
            return conformance.PROCESSING_FAILURE

    def _ended(self, event, released: bool) -> None:
        self._end(event.assoc, released)
        connections.close_all()  # the database connections of this association's thread

    def _end(self, assoc, released: bool) -> None:
        peer = self._peers.pop(id(assoc), None)
        if peer is None:
            return
        try:
            self.receiver.association_ended(peer, id(assoc), released)
        except Exception as exc:
            logger.error("recording the end of an association failed:\n%s", traceback_without_messages(exc))

    def _on_released(self, event) -> None:
        self._ended(event, released=True)

    def _on_aborted(self, event) -> None:
        logger.warning("association from %r aborted", event.assoc.requestor.ae_title)
        self._ended(event, released=False)

    def _on_closed(self, event) -> None:
        # Fired by the connection's own thread, which may run before the association's thread
        # has marked a release (the peer closes as soon as it has the A-RELEASE-RP). An
        # association whose connection is gone without either event ends as dropped, later.
        if id(event.assoc) in self._peers:
            timer = threading.Timer(_LATE_END_S, self._end_late, (event.assoc,))
            timer.daemon = True
            timer.start()

    def _end_late(self, assoc) -> None:
        self._end(assoc, released=False)
        connections.close_all()
