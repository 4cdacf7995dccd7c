"""API representations of a job: its state, downloads, reports and review, its result
sends, the exports the worker writes after it, and the choices of a propagation."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from webapp.delineation import exports, outputs
from webapp.delineation.models import Export, Job, ResultSend


class ResultSendSerializer(serializers.ModelSerializer):
    """A result sent to a DICOM destination (``dicom.send``): queued, sent, or failed with the peer's status."""

    file = serializers.CharField(source="filename", read_only=True)
    status = serializers.IntegerField(
        read_only=True, allow_null=True, help_text="The destination's C-STORE status (0 = stored); null: none yet."
    )

    class Meta:
        model = ResultSend
        fields = ["destination", "file", "state", "status", "message", "attempts", "created", "finished"]
        read_only_fields = fields


class SendRequestSerializer(serializers.Serializer):
    destination = serializers.CharField(
        max_length=64,
        help_text="The name of one of your DICOM destinations (peers an administrator configured for you).",
    )


class JobSerializer(serializers.ModelSerializer):
    sends = ResultSendSerializer(many=True, read_only=True)
    model = serializers.CharField(source="model_name", read_only=True)
    series = serializers.CharField(source="series_key", read_only=True)
    scan_name = serializers.CharField(source="scan.name", read_only=True)
    owner = serializers.CharField(source="scan.owner.username", read_only=True, help_text="The scan's owner.")
    downloads = serializers.SerializerMethodField()
    viewer = serializers.SerializerMethodField()
    rtstruct_check = serializers.SerializerMethodField()
    audit = serializers.SerializerMethodField()
    propagation = serializers.SerializerMethodField()
    review = serializers.SerializerMethodField()
    exports = serializers.SerializerMethodField()
    status_label = serializers.CharField(
        read_only=True, help_text='"Succeeded with warnings" for a job outside its model\'s domain.'
    )
    outside_domain = serializers.BooleanField(
        read_only=True,
        help_text="The scan looks outside what the model was trained for (``domain.reasons`` say why); "
        "its RTSTRUCT and SEG need ``?acknowledge=outside-domain``.",
    )

    class Meta:
        model = Job
        fields = [
            "id",
            "scan",
            "scan_name",
            "owner",
            "model",
            "kind",
            "series",
            "status",
            "stage",
            "progress",
            "error",
            "timings",
            "structures",
            "weights_sha256",
            "input_kind",
            "rtstruct_check",
            "notes",
            "status_label",
            "outside_domain",
            "domain",
            "created",
            "started",
            "finished",
            "downloads",
            "viewer",
            "review",
            "audit",
            "planning_scan",
            "contours_rtstruct",
            "contours_job",
            "choices",
            "propagation",
            "sends",
            "exports",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.DictField(child=serializers.CharField(allow_null=True)))
    def get_downloads(self, job: Job) -> dict[str, str | None]:
        """URL of each download the job has (``outputs.DOWNLOADS``; null: none)."""
        return outputs.links(job, reverse)

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_propagation(self, job: Job) -> dict | None:
        """A succeeded propagation: model, folding_percent (% of daily-scan voxels where the
        deformation folds, Jacobian determinant <= 0), notes, and per structure: name, label,
        volume_ml, dice_vs_direct, msd_mm_vs_direct, hd95_mm_vs_direct (agreement with the
        model's direct segmentation; null without one), folding_percent_inside, warning, and
        ``kept`` ("propagated" or "direct", the physician's choice) and ``direct`` (whether a
        direct segmentation can be kept)."""
        if not job.is_propagation or job.status != Job.Status.SUCCEEDED:
            return None
        report = outputs.propagation_report(job.result_path)
        if report is None:
            return None
        direct = outputs.direct_available(report)
        for s in report["structures"]:
            s["kept"] = job.choices.get(s.get("name"), "propagated")
            s["direct"] = s.get("name") in direct
        return report

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_audit(self, job: Job) -> dict | None:
        """A succeeded contour audit: model_name, notes and one entry per audited ROI, worst
        Dice first (roi_name, structure, qam_score, dice, msd_mm, hd95_mm, model_volume_cm3,
        contour_volume_cm3, flagged, reasons, check_score, check_auc, check_threshold,
        check_auc_val)."""
        if not job.is_audit or job.status != Job.Status.SUCCEEDED:
            return None
        return outputs.audit_report(job.result_path)

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_rtstruct_check(self, job: Job) -> dict | None:
        """The RTSTRUCT read back and compared with the label map before it was offered."""
        if not job.rtstruct_roundtrip:
            return None
        dice = {name: round(float(v), 4) for name, v in job.rtstruct_roundtrip.items()}
        return {"threshold": outputs.roundtrip_threshold(job.result_path), "min_dice": min(dice.values()), "dice": dice}

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_viewer(self, job: Job) -> str | None:
        return reverse("job-viewer", args=[job.id]) if job.status == Job.Status.SUCCEEDED else None

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_review(self, job: Job) -> dict | None:
        """A succeeded job: the latest ``revision`` of its label map (0: the model's output, as the
        downloads serve by default), whether it is ``approved`` and by whom (``approved_by``), and
        the ``revisions`` URL (the history)."""
        if job.status != Job.Status.SUCCEEDED:
            return None
        # all(): prefetched by the API's job lists. None saved yet: the model's output, unapproved.
        latest = max(job.revisions.all(), key=lambda r: r.number, default=None)
        return {
            "revision": latest.number if latest else 0,
            "approved": bool(latest and latest.is_approved),
            "approved_by": latest.reviewer_name if latest else "",
            "revisions": reverse("api-job-revisions", args=[job.id]).rstrip("/") + "/",
        }

    @extend_schema_field(serializers.ListField(child=serializers.DictField()))
    def get_exports(self, job: Job) -> list[dict]:
        """The files the worker writes after the job (the RTSTRUCT for the daily scan, a
        revision's RTSTRUCT or SEG): per file its latest request, ``state`` (queued, running,
        done, failed) and ``error``."""
        latest: dict[str, Export] = {}
        for export in sorted(job.exports.all(), key=lambda e: (e.created, e.pk)):  # all(): prefetched in lists
            latest[export.name] = export
        return [exports.state_of(e) for e in latest.values()]


class ChoicesSerializer(serializers.Serializer):
    """POST /api/jobs/<id>/choices/: per structure name, the contours to keep."""

    choices = serializers.DictField(
        child=serializers.ChoiceField(choices=outputs.CHOICES),
        help_text='{"<structure name>": "propagated" | "direct"}; structures not named keep their earlier choice '
        "(at first: propagated).",
    )

    def validate_choices(self, value: dict[str, str]) -> dict[str, str]:
        job: Job = self.context["job"]
        names = [s.name for s in job.delineated_structures]
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise serializers.ValidationError(
                f"Not a structure of this propagation: {', '.join(unknown)}. Its structures: {', '.join(names)}."
            )
        direct = outputs.direct_available(outputs.propagation_report(job.result_path))
        without = sorted(name for name, kept in value.items() if kept == "direct" and name not in direct)
        if without:
            raise serializers.ValidationError(
                f"No direct segmentation of the daily scan to keep for: {', '.join(without)}. "
                "Keep the propagated contours (the model made no segmentation of these)."
            )
        return value
