"""Patients, teams, and the scans uploaded for them (see ``webapp.delineation.models``)."""

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


class Patient(models.Model):
    """One patient of one user: the scans with the same Patient ID, which the adaptive
    workflow pairs (planning and daily scans).

    ``patient_id`` is the DICOM Patient ID (0010,0020) read from the upload, or entered by
    the user (a NIfTI file has none). It identifies a person: it is shown to its owner only
    and never logged, nor written to the access log (which holds this row's UUID).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="patients")
    patient_id = models.CharField(max_length=64)  # DICOM LO: at most 64 characters
    label = models.CharField(max_length=255, blank=True, default="")  # how the user wants it shown
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]
        constraints = [models.UniqueConstraint(fields=["owner", "patient_id"], name="one_patient_per_id_and_owner")]

    def __str__(self) -> str:
        return self.label or self.patient_id

    @property
    def display(self) -> str:
        return str(self)


class Team(models.Model):
    """A group of users (a department, a tumour-site team) that an owner can share scans with.

    Created and filled by an administrator in the Django admin; users only pick, on their
    scan, one of the teams they are a member of.
    """

    name = models.CharField(max_length=150, unique=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="teams", blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ScanQuerySet(models.QuerySet):
    def visible_to(self, user) -> ScanQuerySet:
        """The scans ``user`` may see: their own and those shared with one of their teams.

        The one access rule of the app: every page, API endpoint and download looks its
        scan or job up through it, so that another user's scan is not found (404). An
        anonymous user sees nothing. Staff get no exception here (the admin is separate).
        """
        if user is None or not user.is_authenticated:
            return self.none()
        shared = Scan.objects.filter(shared_with__members=user).values("pk")  # a subquery: no duplicate rows
        return self.filter(models.Q(owner=user) | models.Q(pk__in=shared))


class Scan(models.Model):
    class InputKind(models.TextChoices):
        DICOM_ZIP = "dicom_zip", "DICOM series (zip)"
        DICOM_FOLDER = "dicom_folder", "DICOM series (folder)"
        NIFTI = "nifti", "NIfTI"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="scans")
    # Set from the DICOM Patient ID on upload, or entered; null: not known (a NIfTI scan without one).
    patient = models.ForeignKey(Patient, null=True, blank=True, on_delete=models.SET_NULL, related_name="scans")
    name = models.CharField(max_length=255)
    input_kind = models.CharField(max_length=16, choices=InputKind.choices)
    # Path of the engine input relative to MEDIA_ROOT: the zip, the NIfTI file, or the
    # ``original/`` folder of a DICOM folder upload.
    input_path = models.CharField(max_length=1024)
    file_count = models.PositiveIntegerField(default=0)
    size_bytes = models.BigIntegerField(default=0)
    # What the upload check found (shape, spacing, orientation, ...); null if not run.
    preflight = models.JSONField(null=True, blank=True)
    # Members of these teams see the scan, its jobs and their files; they do not change it.
    shared_with = models.ManyToManyField(Team, related_name="scans", blank=True)
    # De-identification applied on upload (uploads.deidentify_stored): the profile, its
    # codes and counts; for a NIfTI upload, why the profile does not apply. Null: stored as uploaded.
    deidentification = models.JSONField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    objects = ScanQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_input_kind_display()})"

    def is_owner(self, user) -> bool:
        """Only the owner queues jobs on the scan (propagations too), sets its patient, shares,
        unshares and deletes it."""
        return user is not None and user.is_authenticated and self.owner_id == user.pk

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

    @property
    def deidentification_label(self) -> str:
        """What the scan page says about de-identification."""
        record = self.deidentification
        if not isinstance(record, dict):
            return "Not de-identified: the files are stored as uploaded."
        if record.get("profile"):
            return f"De-identified: {record['profile']}"
        return f"Not de-identified: {record.get('reason', 'the profile does not apply to this upload.')}"


@receiver(post_delete, sender=Scan)
def _remove_scan_files(sender, instance: Scan, **kwargs) -> None:
    """Deleting a scan (API, admin, or its owner's account) deletes its folder once committed."""
    directory = instance.directory
    transaction.on_commit(lambda: shutil.rmtree(directory, ignore_errors=True))


@receiver(post_delete, sender=Scan)
def _remove_patient_without_scans(sender, instance: Scan, **kwargs) -> None:
    """A patient goes with its last scan: its Patient ID is not kept once no scan needs it (retention)."""
    if instance.patient_id is not None:
        Patient.objects.filter(pk=instance.patient_id, scans__isnull=True).delete()
