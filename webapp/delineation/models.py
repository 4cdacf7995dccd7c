"""Scans (uploaded images, stored unchanged) and delineation jobs run on them.

On disk, everything about one scan lives under ``MEDIA_ROOT/scans/<scan uuid>/``:
``original/`` holds the uploaded files byte for byte, ``jobs/<job uuid>/`` the outputs
of each job. Deleting a scan deletes that directory.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from django.conf import settings
from django.db import models, transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver


def scan_dir(scan_id: uuid.UUID) -> Path:
    return Path(settings.MEDIA_ROOT) / "scans" / str(scan_id)


class Scan(models.Model):
    class InputKind(models.TextChoices):
        DICOM_ZIP = "dicom_zip", "DICOM series (zip)"
        DICOM_FOLDER = "dicom_folder", "DICOM series (folder)"
        NIFTI = "nifti", "NIfTI"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="scans")
    name = models.CharField(max_length=255)
    input_kind = models.CharField(max_length=16, choices=InputKind.choices)
    # Path of the engine input relative to MEDIA_ROOT: the zip, the NIfTI file, or the
    # ``original/`` folder of a DICOM folder upload.
    input_path = models.CharField(max_length=1024)
    file_count = models.PositiveIntegerField(default=0)
    size_bytes = models.BigIntegerField(default=0)
    # What the upload check found (shape, spacing, orientation, ...); null if not run.
    preflight = models.JSONField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_input_kind_display()})"

    @property
    def directory(self) -> Path:
        return scan_dir(self.id)

    @property
    def original_dir(self) -> Path:
        return self.directory / "original"

    @property
    def engine_input(self) -> Path:
        return Path(settings.MEDIA_ROOT) / self.input_path

    @property
    def is_dicom(self) -> bool:
        return self.input_kind in (self.InputKind.DICOM_ZIP, self.InputKind.DICOM_FOLDER)


class Job(models.Model):
    class Kind(models.TextChoices):
        SEGMENT = "segment", "Delineation"
        # Check the structure set that came with the scan against the model (engine.infer.audit).
        AUDIT = "audit", "Contour audit"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    FINISHED = (Status.SUCCEEDED, Status.FAILED)
    UNFINISHED = (Status.QUEUED, Status.RUNNING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")
    scan = models.ForeignKey(Scan, on_delete=models.CASCADE, related_name="jobs")
    model_name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.SEGMENT)
    # Key of the image series to delineate (engine.io.preflight); empty for NIfTI.
    series_key = models.CharField(max_length=200, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    stage = models.CharField(max_length=32, blank=True, default="")
    progress = models.PositiveSmallIntegerField(default=0)  # 0-100, overall
    error = models.TextField(blank=True, default="")
    # Seconds per stage ("queue", "ingest", "preprocess", "network", "export", "total").
    timings = models.JSONField(default=dict, blank=True)
    weights_sha256 = models.CharField(max_length=64, blank=True, default="")
    # Output folder relative to MEDIA_ROOT (scans/<scan>/jobs/<job>); empty until run.
    result_dir = models.CharField(max_length=1024, blank=True, default="")
    # As structures.json: [{"label", "name", "color": [r, g, b], "volume_cm3"}]; for an
    # audit, the model's delineation (the audit itself is ``audit.json`` in the output folder).
    structures = models.JSONField(default=list, blank=True)
    input_kind = models.CharField(max_length=16, blank=True, default="")  # "dicom" / "nifti", from the engine
    # The RTSTRUCT read back and compared with the label map: Dice per structure (engine.io.rtstruct_check).
    rtstruct_roundtrip = models.JSONField(default=dict, blank=True)
    # Outputs the engine could not write, and why (e.g. no DICOM SEG for a series without UIDs).
    notes = models.JSONField(default=list, blank=True)
    # SHA-256 (hex) of every file in the output folder, by path relative to it
    # ("labels.nii.gz", "structures/Brainstem.nii.gz", "viewer/image.npy", ...), recorded when
    # the job succeeded and checked on every download. Empty for jobs finished before checksums existed.
    checksums = models.JSONField(default=dict, blank=True)
    # How many times a worker started the job (more than 1: it was delivered again after its worker died).
    attempts = models.PositiveSmallIntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        indexes = [models.Index(fields=["owner", "-created"])]
        constraints = [
            # The same job twice (a double click, a retried POST): tasks.queue_job returns the first.
            models.UniqueConstraint(
                fields=["scan", "model_name", "series_key", "kind"],
                condition=models.Q(status__in=["queued", "running"]),
                name="one_unfinished_job_per_request",
            )
        ]

    def __str__(self) -> str:
        return f"{self.model_name} on {self.scan.name} ({self.status})"

    @property
    def output_dir(self) -> Path:
        return self.scan.directory / "jobs" / str(self.id)

    @property
    def result_path(self) -> Path | None:
        return Path(settings.MEDIA_ROOT) / self.result_dir if self.result_dir else None

    @property
    def is_audit(self) -> bool:
        return self.kind == self.Kind.AUDIT

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED


@receiver(post_delete, sender=Scan)
def _remove_scan_files(sender, instance: Scan, **kwargs) -> None:
    """Deleting a scan (API, admin, or its owner's account) deletes its folder once committed."""
    directory = instance.directory
    transaction.on_commit(lambda: shutil.rmtree(directory, ignore_errors=True))


class AccessEvent(models.Model):
    """One access to patient data: who did what to which scan or job, when, from where.

    Holds ids only: never a scan's name or an uploaded file's name (either can hold a
    patient's name), nor any pixel data. ``filename`` is the name of a job output as
    stored (``rtstruct.dcm``), not the name the download was served under. The row stays
    when its user or object is deleted (``username`` and ``object_id`` keep who and what).
    """

    class Action(models.TextChoices):
        UPLOAD = "upload", "Upload"
        VIEW = "view", "View"
        DOWNLOAD = "download", "Download"
        DELETE = "delete", "Delete"
        QUEUE = "queue", "Queue job"
        # "share" comes with teams and sharing (issue 6), which do not exist yet.

    class ObjectType(models.TextChoices):
        SCAN = "scan", "Scan"
        JOB = "job", "Job"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="access_events"
    )
    username = models.CharField(max_length=150, blank=True, default="")  # empty: the system (retention purge)
    action = models.CharField(max_length=16, choices=Action.choices)
    object_type = models.CharField(max_length=8, choices=ObjectType.choices)
    object_id = models.UUIDField()
    # The owner of the scan or job, so that an owner reads every access to their data.
    object_owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    filename = models.CharField(max_length=100, blank=True, default="")
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        return f"{self.username or 'system'} {self.action} {self.object_type} {self.object_id}"
