"""Patients, their scans (uploaded images, stored unchanged), the jobs run on them, and the
teams scans are shared with.

Who may see what is decided in one place, ``Scan.objects.visible_to(user)`` (and
``Job.objects.visible_to``, which follows it): a scan's owner, and the members of the teams
it is shared with. Everyone else finds nothing (404). Only the owner changes a scan: queues
jobs on it (propagations included), sets its patient, shares, unshares and deletes it
(``Scan.is_owner``). A patient is never shared: only its owner finds it.

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


class JobQuerySet(models.QuerySet):
    def visible_to(self, user) -> JobQuerySet:
        """The jobs of the scans ``user`` may see (``ScanQuerySet.visible_to``)."""
        return self.filter(scan__in=Scan.objects.visible_to(user).values("pk"))


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


class Job(models.Model):
    class Kind(models.TextChoices):
        SEGMENT = "segment", "Delineation"
        # Check the structure set that came with the scan against the model (engine.infer.audit).
        AUDIT = "audit", "Contour audit"
        # Propagate the planning contours to this (daily) scan (engine.infer.propagate).
        PROPAGATE = "propagate", "Contour propagation"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    FINISHED = (Status.SUCCEEDED, Status.FAILED)
    UNFINISHED = (Status.QUEUED, Status.RUNNING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")
    # For a propagation: the daily scan (fixed image), on whose grid every output is.
    scan = models.ForeignKey(Scan, on_delete=models.CASCADE, related_name="jobs")
    # Propagation only: the planning scan (moving image) and its contours, either an RTSTRUCT
    # of its upload (by SOP Instance UID) or a delineation job's result. Null once deleted:
    # the job's outputs stay with the daily scan.
    planning_scan = models.ForeignKey(
        Scan, null=True, blank=True, on_delete=models.SET_NULL, related_name="planning_jobs"
    )
    contours_rtstruct = models.CharField(max_length=64, blank=True, default="")
    contours_job = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="propagations"
    )
    # Propagation only: per structure name, the contours the physician keeps, "propagated"
    # or "direct" (the model's own segmentation of the daily scan); absent: propagated.
    choices = models.JSONField(default=dict, blank=True)
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
    # Whether the scan is inside the model's domain (engine.infer.domain, domain.json):
    # {"in_domain", "reasons", "structures", "signals"}; empty for jobs without the check.
    # A succeeded job outside it is "succeeded with warnings" (``outside_domain``).
    domain = models.JSONField(default=dict, blank=True)
    # How many times a worker started the job (more than 1: it was delivered again after its worker died).
    attempts = models.PositiveSmallIntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-created"]
        indexes = [models.Index(fields=["owner", "-created"])]
        # The same job twice (a double click, a retried POST): tasks.queue_job returns the first.
        # A propagation is the same request only with the same planning scan and contours; its
        # two kinds of contour source get a constraint each, as NULLs never compare equal.
        constraints = [
            models.UniqueConstraint(
                fields=["scan", "model_name", "series_key", "kind"],
                condition=models.Q(status__in=["queued", "running"]) & ~models.Q(kind="propagate"),
                name="one_unfinished_job_per_request",
            ),
            models.UniqueConstraint(
                fields=["scan", "model_name", "series_key", "planning_scan", "contours_rtstruct"],
                condition=models.Q(status__in=["queued", "running"], kind="propagate", contours_job__isnull=True),
                name="one_unfinished_propagation_per_rtstruct",
            ),
            models.UniqueConstraint(
                fields=["scan", "model_name", "series_key", "planning_scan", "contours_job"],
                condition=models.Q(status__in=["queued", "running"], kind="propagate", contours_job__isnull=False),
                name="one_unfinished_propagation_per_contours_job",
            ),
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
    def is_propagation(self) -> bool:
        return self.kind == self.Kind.PROPAGATE

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    # The value of ``acknowledge`` (query or form field) that accepts a domain warning.
    ACKNOWLEDGE_OUTSIDE_DOMAIN = "outside-domain"

    @property
    def outside_domain(self) -> bool:
        """Succeeded with warnings: the scan looks outside what the model was trained for,
        so its RTSTRUCT and SEG are downloaded only after an acknowledgement."""
        return self.status == self.Status.SUCCEEDED and self.domain.get("in_domain") is False

    @property
    def domain_warning(self) -> str:
        """Why the scan looks outside what the model was trained for, in one sentence."""
        reasons = "; ".join(self.domain.get("reasons", [])) or "see the job page"
        return f"This scan looks outside what {self.model_name} was trained for: {reasons}"

    @property
    def status_label(self) -> str:
        return "Succeeded with warnings" if self.outside_domain else self.get_status_display()


class Revision(models.Model):
    """One revision of a job's label map: the model's output (number 0, no author) or a
    physician's correction of its parent, never overwritten (``webapp.delineation.revisions``).

    Files under the job's folder, ``revisions/<number>/``: ``labels.nii.gz`` (uint8, the
    grid and voxel order of the job's ``labels.nii.gz``), ``labels.npy`` (canonical RAS, for
    the viewer), and once asked for ``rtstruct.dcm``; revision 0 is the job's own files.
    ``measures``, per structure name: ``edited`` (differs from the model's output), ``dice``
    and ``added_path_length_mm`` against it, ``volume_cm3``. ``edit``: what was done (mode,
    plane, slices, structure; no pixel data).
    """

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="revisions")
    number = models.PositiveIntegerField()
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )  # null: the model (revision 0)
    author_name = models.CharField(max_length=150, blank=True, default="")  # kept when the user is deleted
    created = models.DateTimeField(auto_now_add=True)
    # CASCADE: a revision goes only with its job, and all its revisions with it.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    changed = models.JSONField(default=list, blank=True)  # structure names this edit changed (vs its parent)
    edit = models.JSONField(default=dict, blank=True)
    measures = models.JSONField(default=dict, blank=True)
    # SHA-256 of the revision's files by path relative to the job's folder, checked on download.
    checksums = models.JSONField(default=dict, blank=True)
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewer_name = models.CharField(max_length=150, blank=True, default="")  # DICOM Reviewer Name
    approved = models.DateTimeField(null=True, blank=True)
    approval_comment = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["job", "number"]
        constraints = [models.UniqueConstraint(fields=["job", "number"], name="one_revision_number_per_job")]

    def __str__(self) -> str:
        return f"revision {self.number} of job {self.job_id}"

    @property
    def is_approved(self) -> bool:
        return self.approved is not None

    @property
    def folder(self) -> str:
        """The revision's folder relative to the job's output folder ("" for revision 0)."""
        return f"revisions/{self.number}" if self.number else ""

    @property
    def labels_file(self) -> str:
        """The revision's label map (NIfTI), relative to the job's output folder."""
        return f"{self.folder}/labels.nii.gz" if self.number else "labels.nii.gz"

    @property
    def edited_structures(self) -> list[str]:
        return [name for name, m in self.measures.items() if m.get("edited")]


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


class AccessEvent(models.Model):
    """One access to patient data: who did what to which scan, job or patient, when, from where.

    Holds ids only: never a scan's name or an uploaded file's name (either can hold a
    patient's name), nor any pixel data. ``filename`` is the name of a job output as
    stored (``rtstruct.dcm``), not the name the download was served under; ``team`` the
    team a scan was shared with or unshared from. The row stays
    when its user or object is deleted (``username`` and ``object_id`` keep who and what).
    A ``purge`` of this log itself (``retention.purge_audit_log``) is recorded with no user and
    no object id, and ``count``: how many events it deleted.
    """

    class Action(models.TextChoices):
        UPLOAD = "upload", "Upload"
        VIEW = "view", "View"
        DOWNLOAD = "download", "Download"
        DELETE = "delete", "Delete"
        QUEUE = "queue", "Queue job"
        SHARE = "share", "Share with a team"
        UNSHARE = "unshare", "Stop sharing with a team"
        PURGE = "purge", "Delete old events of this log"
        # A job's result sent to a DICOM destination ("Send to", API): ``filename`` is the output sent.
        SEND = "send", "Send to a DICOM destination"
        # A download of a job outside its model's domain, after the warning was acknowledged.
        ACKNOWLEDGE = "acknowledge", "Acknowledged a domain warning"
        # The DICOM node refused an association: the calling AE title is not a configured peer.
        DICOM_REJECTED = "dicom_rejected", "DICOM association rejected"
        # A job's contours corrected (a new revision; ``filename``: its label map) or approved.
        EDIT = "edit", "Edit contours"
        APPROVE = "approve", "Approve contours"

    class ObjectType(models.TextChoices):
        SCAN = "scan", "Scan"
        JOB = "job", "Job"
        PATIENT = "patient", "Patient"
        AUDIT_LOG = "log", "Audit log"
        DICOM_NODE = "dicom", "DICOM node"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="access_events"
    )
    username = models.CharField(max_length=150, blank=True, default="")  # empty: the system (retention purge)
    action = models.CharField(max_length=16, choices=Action.choices)
    object_type = models.CharField(max_length=8, choices=ObjectType.choices)
    object_id = models.UUIDField(null=True, blank=True)  # null: the audit log itself (a purge)
    # The owner of the scan or job, so that an owner reads every access to their data.
    object_owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    filename = models.CharField(max_length=100, blank=True, default="")
    # Share and unshare: the team's name then (it stays when the team is renamed or deleted).
    team = models.CharField(max_length=150, blank=True, default="")
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    # A DICOM association: the calling AE title (an upload by a peer, or a rejected association).
    calling_ae = models.CharField(max_length=16, blank=True, default="")
    count = models.PositiveIntegerField(null=True, blank=True)  # a purge: the events it deleted
    created = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        what = f"{self.count} event(s)" if self.action == self.Action.PURGE else self.object_id
        return f"{self.username or 'system'} {self.action} {self.object_type} {what}"


# The DICOM node's models live in their own module; imported here so that Django registers them.
from webapp.delineation.dicom.models import DicomPeer, DicomReceipt, ResultSend  # noqa: E402, F401
