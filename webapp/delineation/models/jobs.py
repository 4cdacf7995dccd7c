"""Jobs run on scans, the revisions of their label maps, and the exports written after
them (see ``webapp.delineation.models``)."""

from __future__ import annotations

import uuid
from pathlib import Path

from django.conf import settings
from django.db import models

from webapp.delineation.engine_client import ResultFolder, Structure
from webapp.delineation.models.scans import Scan


class JobQuerySet(models.QuerySet):
    def visible_to(self, user) -> JobQuerySet:
        """The jobs of the scans ``user`` may see (``ScanQuerySet.visible_to``)."""
        return self.filter(scan__in=Scan.objects.visible_to(user).values("pk"))


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
    # As structures.json (engine_client.StructureEntry): [{"label", "name", "color": [r, g, b],
    # "volume_cm3", "file"?}]; for an audit, the model's delineation (the audit itself is
    # ``audit.json`` in the output folder). Read as objects through ``delineated_structures``.
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
    def delineated_structures(self) -> list[Structure]:
        """``structures`` as objects (``Structure.from_dict``: label, name, colour; the RT
        ROI Interpreted Type from each TG-263 name), in the label map's order."""
        return [Structure.from_dict(s) for s in self.structures]

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
        return f"{ResultFolder.REVISIONS}/{self.number}" if self.number else ""

    @property
    def labels_file(self) -> str:
        """The revision's label map (NIfTI), relative to the job's output folder."""
        return f"{self.folder}/{ResultFolder.LABELS}" if self.number else ResultFolder.LABELS

    @property
    def edited_structures(self) -> list[str]:
        return [name for name, m in self.measures.items() if m.get("edited")]


class Export(models.Model):
    """An output of a succeeded job that the worker writes after the job, on request
    (``webapp.delineation.exports``): the RTSTRUCT for the daily scan built from a
    propagation's ``choices`` (``final/rtstruct.dcm``), or a revision's RTSTRUCT or DICOM
    SEG (``revisions/<n>/rtstruct.dcm``, ``seg.dcm``). ``name``: the file, relative to the
    job's folder; ``error``: why it failed, for the physician. One is queued at a time per
    file; a newer request while one runs queues the next."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="exports")
    name = models.CharField(max_length=100)
    state = models.CharField(max_length=8, choices=State.choices, default=State.QUEUED)
    error = models.TextField(blank=True, default="")
    created = models.DateTimeField(auto_now_add=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job", "name", "-created", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["job", "name"], condition=models.Q(state="queued"), name="one_queued_export_per_file"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} of job {self.job_id} ({self.state})"
