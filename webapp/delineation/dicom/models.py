"""The DICOM node's records: the peers an administrator configured, the studies being
received from them, and the results sent back (docs/dicom-networking.md).

A peer belongs to one user, its owner: what the peer sends is stored, checked and owned
exactly as if the owner had uploaded it (``uploads.record_stored``), and only the owner
(and the teams the owner shares a scan with) sees it. A receipt holds no patient data:
the Study Instance UID it collects is kept as a hash (``study_key``), never as is.
"""

from __future__ import annotations

import shutil
import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from webapp.delineation.engine_client import ResultFolder


def validate_ae_title(value: str) -> None:
    """A DICOM AE title (PS3.5 VR AE): 1 to 16 printable ASCII characters, no backslash, not only spaces."""
    if not value.strip() or len(value) > 16 or not all(32 <= ord(c) < 127 for c in value) or "\\" in value:
        raise ValidationError(f"{value!r} is not an AE title: 1 to 16 ASCII characters, no backslash.")


class DicomPeer(models.Model):
    """A modality, PACS or planning system allowed to associate with the node, by its calling AE title."""

    name = models.CharField(max_length=64, unique=True)
    ae_title = models.CharField(max_length=16, unique=True, validators=[validate_ae_title])
    # Where results are sent (C-STORE SCU), and where associations from this AE title must come from.
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField(validators=[MinValueValidator(1), MaxValueValidator(65535)])
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="dicom_peers")
    # A job with this model is queued for every complete image series the peer sends; empty: none.
    model_name = models.CharField(max_length=100, blank=True, default="")
    # The RTSTRUCT of each such job is sent back to the peer.
    send_results = models.BooleanField(default=False)
    # Also send the job's DICOM SEG (when the job wrote one).
    send_seg = models.BooleanField(default=False)
    # Send results to this destination instead of back to the peer (e.g. scanner in, TPS out).
    results_to = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", verbose_name="send results to"
    )
    # Results are sent to this peer over TLS (dicom/tls.py).
    tls = models.BooleanField(default=False, verbose_name="TLS")
    # Send results by DICOMweb STOW-RS to this service root (e.g. https://pacs/dicom-web)
    # instead of C-STORE to host:port; empty: C-STORE.
    stow_url = models.URLField(max_length=500, blank=True, default="", verbose_name="STOW-RS URL")
    # De-identify what the peer sends before it is stored, as the upload box does.
    deidentify = models.BooleanField(default=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "DICOM peer"

    def __str__(self) -> str:
        return f"{self.name} ({self.ae_title} at {self.host}:{self.port})"


class DicomReceipt(models.Model):
    """The objects of one study received from one peer, until they become a scan.

    The files are written under ``MEDIA_ROOT/scans/<id>/original/`` as they arrive, so the
    scan's id is this row's id. The study is complete when every association that sent to
    it has ended, the last with A-RELEASE, and nothing arrived for
    ``DICOM_NODE_SERIES_QUIET_S`` seconds; it is then ingested like an upload.
    """

    class State(models.TextChoices):
        RECEIVING = "receiving", "Receiving"
        INGESTING = "ingesting", "Being checked"
        INGESTED = "ingested", "Scan recorded"
        FAILED = "failed", "Not recorded"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    peer = models.ForeignKey(DicomPeer, null=True, blank=True, on_delete=models.SET_NULL, related_name="receipts")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="dicom_receipts")
    calling_ae = models.CharField(max_length=16)
    study_key = models.CharField(max_length=64)  # SHA-256 (hex) of the Study Instance UID
    state = models.CharField(max_length=16, choices=State.choices, default=State.RECEIVING)
    instances = models.PositiveIntegerField(default=0)
    size_bytes = models.BigIntegerField(default=0)
    open_associations = models.PositiveSmallIntegerField(default=0)
    released = models.BooleanField(default=False)  # the last association that ended had A-RELEASE
    last_received = models.DateTimeField(null=True, blank=True)
    scan = models.OneToOneField(
        "delineation.Scan", null=True, blank=True, on_delete=models.SET_NULL, related_name="dicom_receipt"
    )
    error = models.TextField(blank=True, default="")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]
        verbose_name = "DICOM receipt"
        constraints = [
            models.UniqueConstraint(
                fields=["peer", "study_key"], condition=models.Q(state="receiving"), name="one_receiving_per_study"
            )
        ]

    def __str__(self) -> str:
        return f"{self.calling_ae}: {self.instances} object(s), {self.state}"


@receiver(post_delete, sender=DicomReceipt)
def _remove_unrecorded_files(sender, instance: DicomReceipt, **kwargs) -> None:
    """A receipt deleted before its scan was recorded takes its files with it (a scan's own
    files go with the scan)."""
    if instance.scan_id is None:
        from webapp.delineation.models import scan_dir

        directory = scan_dir(instance.id)
        transaction.on_commit(lambda: shutil.rmtree(directory, ignore_errors=True))


class ResultSend(models.Model):
    """One result of a job sent to a DICOM destination (C-STORE SCU), with its outcome."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    job = models.ForeignKey("delineation.Job", on_delete=models.CASCADE, related_name="sends")
    peer = models.ForeignKey(DicomPeer, null=True, blank=True, on_delete=models.SET_NULL, related_name="sends")
    destination = models.CharField(max_length=64)  # the peer's name then (kept when it is removed)
    filename = models.CharField(max_length=100, default=ResultFolder.RTSTRUCT)  # the job output sent
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    status = models.PositiveIntegerField(null=True, blank=True)  # the peer's C-STORE status
    message = models.TextField(blank=True, default="")
    attempts = models.PositiveSmallIntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created", "id"]

    def __str__(self) -> str:
        return f"{self.filename} to {self.destination} ({self.state})"

    def to_dict(self) -> dict:
        return {
            "destination": self.destination,
            "file": self.filename,
            "state": self.state,
            "status": f"0x{self.status:04X}" if self.status is not None else None,
            "message": self.message,
            "attempts": self.attempts,
            "created": self.created.isoformat() if self.created else None,
            "finished": self.finished.isoformat() if self.finished else None,
        }
