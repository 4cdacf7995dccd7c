"""What the node does with what a peer sends: each object is written to disk as it
arrives, grouped by study into a ``DicomReceipt``; a study is complete when its
associations have ended, the last one released (not aborted), and nothing arrived for
``DICOM_NODE_SERIES_QUIET_S`` seconds; it is then recorded as a scan of the peer's owner
by the upload code path (``uploads.record_stored``: de-identification, pre-flight, the
``Scan`` and its patient), and the peer's rule queues its jobs.

Nothing acknowledged is lost: an object is on disk (written under a temporary name,
renamed into place, mode 640 in folders of mode 750) before the node answers Success; a
dropped association keeps what arrived, and its study completes once the rest is sent
again in an association that is released; a study that cannot be delineated is still
recorded, with its refusals on its scan page. A file is named by the SHA-256 of its SOP
Instance UID, so an object sent twice is stored once, and no UID is in a path.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
from datetime import timedelta
from pathlib import Path, PurePosixPath
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, connections, transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone
from pydicom.dataset import Dataset

from webapp.delineation import access_log, rules, uploads
from webapp.delineation.dicom import conformance, peers
from webapp.delineation.dicom.models import DicomPeer, DicomReceipt
from webapp.delineation.engine_client import write_atomically
from webapp.delineation.models import scan_dir
from webapp.delineation.redact import traceback_without_messages

logger = logging.getLogger(__name__)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("ascii", "replace")).hexdigest()


def original_dir(receipt_id: UUID) -> Path:
    return scan_dir(receipt_id) / "original"


class Assembly:
    """The node's ``scp.Receiver``, and the thread that completes and ingests studies."""

    def __init__(self, quiet_s: float | None = None, poll_s: float | None = None) -> None:
        self.quiet_s = settings.DICOM_NODE_SERIES_QUIET_S if quiet_s is None else quiet_s
        self.poll_s = poll_s if poll_s is not None else max(0.2, min(1.0, self.quiet_s / 2))
        self._lock = threading.Lock()
        # association -> {study key: receipt id} it stored into (each counted once as open there)
        self._open: dict[int, dict[str, UUID]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- scp.Receiver ---------------------------------------------------------------------

    def authorise(self, calling_ae: str, address: str) -> DicomPeer | None:
        return peers.authorise(calling_ae, address)

    def store(self, peer: DicomPeer, association: int, dataset: Dataset, encoded: bytes) -> int:
        sop_uid = str(dataset.get("SOPInstanceUID", "") or "")
        if not sop_uid:
            return conformance.CANNOT_UNDERSTAND
        # Keyed by peer and study: the CT and its RTSTRUCT of one study become one scan.
        study_key = _sha256(f"{peer.pk}:{dataset.get('StudyInstanceUID', '') or ''}")
        receipt_id = self._receipt(peer, association, study_key)
        path = original_dir(receipt_id) / f"{_sha256(sop_uid)[:40]}.dcm"
        new = not path.exists()
        if new and self._over_limits(receipt_id, len(encoded)):
            return conformance.OUT_OF_RESOURCES
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda tmp: Path(tmp).write_bytes(encoded))
        DicomReceipt.objects.filter(pk=receipt_id).update(
            instances=F("instances") + int(new),
            size_bytes=F("size_bytes") + (len(encoded) if new else 0),
            last_received=timezone.now(),
        )
        return conformance.SUCCESS

    @staticmethod
    def _over_limits(receipt_id: UUID, size: int) -> bool:
        """A study is an upload: the upload limits bound it (DELINEO_MAX_UPLOAD_FILES and
        _BYTES), so that no sender fills the disk; what is over them is refused, not stored."""
        counts = DicomReceipt.objects.filter(pk=receipt_id).values("instances", "size_bytes").first() or {}
        files, stored = counts.get("instances", 0), counts.get("size_bytes", 0)
        if files >= settings.DELINEO_MAX_UPLOAD_FILES or stored + size > settings.DELINEO_MAX_UPLOAD_BYTES:
            logger.warning("a study reached the upload limits (%d objects, %d bytes): object refused", files, stored)
            return True
        return False

    def association_ended(self, peer: DicomPeer, association: int, released: bool) -> None:
        with self._lock:
            receipts = self._open.pop(association, {})
        for receipt_id in receipts.values():
            DicomReceipt.objects.filter(pk=receipt_id).update(
                open_associations=Greatest(F("open_associations") - 1, 0), released=released
            )
        if receipts and not released:
            logger.warning("association from %r dropped: %d study(ies) wait for the rest", peer.ae_title, len(receipts))

    def _receipt(self, peer: DicomPeer, association: int, study_key: str) -> UUID:
        """The receiving receipt of this study, counted open once per association."""
        with self._lock:
            known = self._open.get(association, {}).get(study_key)
        if known is not None:
            return known
        for _ in range(3):
            with transaction.atomic():
                receipt = DicomReceipt.objects.filter(peer=peer, study_key=study_key, state="receiving").first()
                # Conditional: a receipt being taken for ingest at this moment is not joined.
                if receipt is not None and DicomReceipt.objects.filter(pk=receipt.pk, state="receiving").update(
                    open_associations=F("open_associations") + 1
                ):
                    break
            try:
                with transaction.atomic():
                    receipt = DicomReceipt.objects.create(
                        peer=peer, owner_id=peer.owner_id, calling_ae=peer.ae_title, study_key=study_key,
                        open_associations=1,
                    )  # fmt: skip
                break
            except IntegrityError:  # another association of the same study made it first
                continue
        else:
            raise RuntimeError("could not find or make the receipt of a study")
        with self._lock:
            self._open.setdefault(association, {})[study_key] = receipt.pk
        return receipt.pk

    # --- completion -------------------------------------------------------------------------

    def ready(self) -> list[UUID]:
        """Receipts whose study is complete (see module doc)."""
        cutoff = timezone.now() - timedelta(seconds=self.quiet_s)
        return list(
            DicomReceipt.objects.filter(
                state="receiving", open_associations=0, released=True, last_received__lte=cutoff
            ).values_list("pk", flat=True)
        )

    def complete(self, receipt_id: UUID):  # -> Scan | None
        """Ingest one complete study: the scan it became, or None (taken elsewhere, or failed)."""
        if not DicomReceipt.objects.filter(pk=receipt_id, state="receiving", open_associations=0).update(
            state="ingesting"
        ):
            return None
        receipt = DicomReceipt.objects.select_related("peer", "owner").get(pk=receipt_id)
        try:
            scan = self._ingest(receipt)
        except uploads.UploadError as exc:
            logger.warning("a study received from %r was not recorded as a scan", receipt.calling_ae)
            DicomReceipt.objects.filter(pk=receipt_id).update(state="failed", error=exc.message)
            return None
        except Exception as exc:
            logger.error("ingest of a study from %r failed:\n%s", receipt.calling_ae, traceback_without_messages(exc))
            DicomReceipt.objects.filter(pk=receipt_id).update(
                state="failed", error=f"Internal error while checking the study ({type(exc).__name__})."
            )
            return None
        DicomReceipt.objects.filter(pk=receipt_id).update(state="ingested", scan=scan)
        self._apply_rule(receipt.peer, scan)
        return scan

    def _ingest(self, receipt: DicomReceipt):
        original = original_dir(receipt.id)
        for leftover in original.glob(".*"):  # a write cut short by a crash, never acknowledged
            leftover.unlink()
        relative = sorted(PurePosixPath(p.name) for p in original.iterdir() if p.is_file())
        peer = receipt.peer
        name = f"DICOM from {peer.name if peer else receipt.calling_ae}"
        stored = uploads.stored_folder(original, relative, name)
        scan = uploads.record_stored(
            receipt.owner, receipt.id, stored, name, deidentify=bool(peer and peer.deidentify), keep_refused=True
        )
        if peer is not None:
            access_log.record_dicom_upload(peer, scan)
        logger.info("scan %s recorded from %d object(s) sent by %r", scan.pk, stored.file_count, receipt.calling_ae)
        return scan

    def _apply_rule(self, peer: DicomPeer | None, scan) -> None:  # noqa: ANN001 (a Scan)
        """A peer with a model: one job per image series that can be delineated."""
        if peer is None or not peer.model_name:
            return
        from webapp.delineation import tasks  # Celery tasks import this module's callers
        from webapp.delineation.dicom import send

        for key in rules.usable_series(scan.preflight):
            try:
                with transaction.atomic():  # the send is planned before the job can finish
                    job, _ = tasks.queue_job(scan.owner, scan, peer.model_name, key)
                    send.plan_sends(job, peer)
            except Exception as exc:
                logger.error("queueing a job on scan %s failed:\n%s", scan.pk, traceback_without_messages(exc))

    def recover(self) -> None:
        """At start-up: no association survives a restart, and a study whose ingest was cut
        short is checked again (from ``original/``, which is removed only once de-identified)."""
        DicomReceipt.objects.filter(state="receiving").update(open_associations=0)
        for receipt in DicomReceipt.objects.filter(state="ingesting"):
            if original_dir(receipt.id).is_dir():
                shutil.rmtree(scan_dir(receipt.id) / "deidentified", ignore_errors=True)
                DicomReceipt.objects.filter(pk=receipt.pk).update(state="receiving", released=True)
            else:
                DicomReceipt.objects.filter(pk=receipt.pk).update(
                    state="failed", error="The node stopped while this study was being checked."
                )

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="dicom-assembly", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                for receipt_id in self.ready():
                    self.complete(receipt_id)
            except Exception as exc:  # the database went away: try again at the next poll
                logger.error("the DICOM node's completion check failed:\n%s", traceback_without_messages(exc))
                connections.close_all()
        connections.close_all()
