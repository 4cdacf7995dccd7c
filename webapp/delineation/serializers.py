"""API representations of scans, jobs, teams and the audit log."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import exceptions, serializers

from webapp.delineation import services, sharing
from webapp.delineation.models import AccessEvent, Job, Scan, Team


class TeamSerializer(serializers.ModelSerializer):
    members = serializers.SlugRelatedField(slug_field="username", many=True, read_only=True)

    class Meta:
        model = Team
        fields = ["id", "name", "members"]
        read_only_fields = fields


class SharedTeamSerializer(serializers.ModelSerializer):
    class Meta:
        model = Team
        fields = ["id", "name"]
        read_only_fields = fields


class ShareSerializer(serializers.Serializer):
    """Body of ``POST /api/scans/{id}/share/`` and ``.../unshare/`` (checked in ``sharing``)."""

    team = serializers.IntegerField(help_text="Id of one of your teams (GET /api/teams/).")


class ScanSerializer(serializers.ModelSerializer):
    jobs = serializers.SerializerMethodField()
    owner = serializers.CharField(source="owner.username", read_only=True)
    shared_with = SharedTeamSerializer(many=True, read_only=True, help_text="Teams whose members see the scan.")
    deidentification = serializers.JSONField(
        read_only=True,
        help_text="Null: stored as uploaded. Otherwise the de-identification applied on upload: 'profile' "
        "(e.g. 'DICOM PS3.15 Annex E Basic Profile'; null for NIfTI, with the 'reason'), 'codes' (DCM), "
        "'method', 'table', counts of 'files' written, 'dropped_files' and 'uids_replaced', 'notes'.",
    )
    deidentified = serializers.CharField(
        source="deidentification_label", read_only=True, help_text="The same, in words, as the scan page shows it."
    )

    class Meta:
        model = Scan
        fields = [
            "id",
            "name",
            "owner",
            "shared_with",
            "input_kind",
            "file_count",
            "size_bytes",
            "preflight",
            "deidentification",
            "deidentified",
            "created",
            "jobs",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.ListField(child=serializers.UUIDField()))
    def get_jobs(self, scan: Scan) -> list[str]:
        return [str(pk) for pk in scan.jobs.values_list("id", flat=True)]


class ScanUploadSerializer(serializers.Serializer):
    """Multipart upload: ``file`` (a .zip or .nii/.nii.gz) or ``files`` (+ ``paths``)."""

    file = serializers.FileField(required=False, help_text="A zip of one DICOM series, or a .nii/.nii.gz file.")
    files = serializers.ListField(
        child=serializers.FileField(), required=False, help_text="The DICOM files of one folder (one field per file)."
    )
    paths = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="Relative path of each file of 'files', in the same order (e.g. 'CT/IM0001.dcm').",
    )
    name = serializers.CharField(
        required=False,
        max_length=255,
        help_text="A label for the scan; default: file name (with 'deidentify': a neutral name).",
    )
    deidentify = serializers.BooleanField(
        required=False,
        help_text="De-identify the DICOM files before they are stored (DICOM PS3.15 Annex E Basic Profile); "
        "the files as sent are not kept. Default: the server's DELINEO_DEIDENTIFY_DEFAULT (false unless set).",
    )


@extend_schema_field(OpenApiTypes.UUID)
class _OwnScanField(serializers.PrimaryKeyRelatedField):
    default_error_messages = {
        "does_not_exist": "No scan with id {pk_value} (among your scans).",
        "incorrect_type": "A scan id (UUID) is expected.",
    }

    def get_queryset(self):  # another user's scan does not exist for them; a shared one does
        return Scan.objects.visible_to(self.context["request"].user)

    def to_internal_value(self, data):
        try:
            return super().to_internal_value(data)
        except serializers.ValidationError:
            raise
        except Exception:  # malformed UUID
            self.fail("does_not_exist", pk_value=data)


class JobCreateSerializer(serializers.Serializer):
    scan = _OwnScanField(help_text="Id of one of your scans.")
    model = serializers.CharField(max_length=100, help_text="A shipped model name, see GET /api/models/.")
    series = serializers.CharField(
        max_length=200,
        required=False,
        allow_blank=True,
        help_text="The image series to delineate (a 'key' from the scan's preflight report); "
        "needed only when the upload holds several usable series.",
    )
    kind = serializers.ChoiceField(
        choices=Job.Kind.choices,
        default=Job.Kind.SEGMENT,
        help_text="'segment' (default): delineate the scan. 'audit': check the structure set (RTSTRUCT) uploaded "
        "with a DICOM scan against the model; the model must ship a contour-quality critic ('audit' in /api/models/).",
    )

    def validate_scan(self, scan: Scan) -> Scan:
        """A team member sees a shared scan but does not start jobs on it: 403, not 400."""
        try:
            sharing.check_owner(scan, self.context["request"].user, "start a job on")
        except sharing.SharingRefused as exc:
            raise exceptions.PermissionDenied(exc.message) from None
        return scan

    def validate(self, attrs: dict) -> dict:
        attrs["series"] = self._series(attrs)
        if attrs.get("kind") == Job.Kind.AUDIT:
            self._check_audit(attrs["scan"], attrs["model"])
        return attrs

    def _check_audit(self, scan: Scan, model: str) -> None:
        """An audit needs a DICOM scan with a structure set, and a model with a critic."""
        report = scan.preflight if isinstance(scan.preflight, dict) else None
        errors = {}
        if not scan.is_dicom or (report and report.get("kind") == "nifti"):
            errors["scan"] = (
                "A NIfTI scan cannot be audited: the audit needs the DICOM series the structure set (RTSTRUCT) "
                "was drawn on. Upload the DICOM CT together with its RTSTRUCT."
            )
        elif report and not services.structure_sets(report):
            errors["scan"] = (
                "This upload holds no structure set (RTSTRUCT) to audit. "
                "Upload the DICOM CT together with the RTSTRUCT drawn on it."
            )
        capable = services.audit_models()
        if model not in capable:
            errors["model"] = f"Model {model!r} cannot audit contours: it has no contour-quality critic. " + (
                f"Models that can: {', '.join(capable)}." if capable else services.AUDIT_NEEDS_CRITIC
            )
        if errors:
            raise serializers.ValidationError(errors)

    def _series(self, attrs: dict) -> str:
        """The series key to use: the requested one if usable, or the only usable one."""
        scan: Scan = attrs["scan"]
        report = scan.preflight if isinstance(scan.preflight, dict) else None
        requested = attrs.get("series") or ""
        if not report or report.get("kind") != "dicom":
            return requested
        usable = services.usable_series(report)
        by_key = {s.get("key"): s for s in report.get("series", [])}
        if requested:
            if requested not in by_key:
                raise serializers.ValidationError({"series": f"The scan has no image series {requested!r}."})
            if requested not in usable:
                raise serializers.ValidationError(
                    {"series": f"That series cannot be delineated: {by_key[requested].get('reason', 'refused')}"}
                )
        elif len(usable) == 1:
            requested = usable[0]
        elif len(usable) > 1:
            described = "; ".join(
                f"{k} ({by_key[k].get('modality')}, {by_key[k].get('images')} images"
                f"{', ' + by_key[k]['series_description'] if by_key[k].get('series_description') else ''})"
                for k in usable
            )
            raise serializers.ValidationError(
                {"series": f"This upload holds {len(usable)} image series; choose one: {described}."}
            )
        return requested

    def validate_model(self, value: str) -> str:
        models = services.available_models()
        if value not in models:
            if not models:
                raise serializers.ValidationError(
                    f"Unknown model {value!r}: no delineation model is installed on this server."
                )
            raise serializers.ValidationError(f"Unknown model {value!r}. Available models: {', '.join(models)}.")
        return value


class JobSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model_name", read_only=True)
    series = serializers.CharField(source="series_key", read_only=True)
    scan_name = serializers.CharField(source="scan.name", read_only=True)
    owner = serializers.CharField(source="scan.owner.username", read_only=True, help_text="The scan's owner.")
    downloads = serializers.SerializerMethodField()
    viewer = serializers.SerializerMethodField()
    rtstruct_check = serializers.SerializerMethodField()
    audit = serializers.SerializerMethodField()

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
            "created",
            "started",
            "finished",
            "downloads",
            "viewer",
            "audit",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.DictField(child=serializers.CharField(allow_null=True)))
    def get_downloads(self, job: Job) -> dict[str, str | None]:
        if job.status != Job.Status.SUCCEEDED:
            return {}

        def file_url(name: str) -> str:  # the router's optional slash reverses as "/"
            return reverse(name, args=[job.id]).rstrip("/")

        links = {
            "labels": file_url("api-job-labels"),
            "structures_zip": file_url("api-job-structures-zip"),
        }
        for key, filename, url_name in services.OPTIONAL_OUTPUTS:
            exists = job.result_path is not None and (job.result_path / filename).exists()
            links[key] = file_url(url_name) if exists else None
        if job.is_audit:  # an audit writes the model's label map, not one mask per structure
            links["structures_zip"] = None
        return links

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_audit(self, job: Job) -> dict | None:
        """A succeeded contour audit: model_name, qam_threshold, notes and one entry per audited
        ROI, worst Dice first (roi_name, structure, qam_score, dice, msd_mm, hd95_mm,
        model_volume_cm3, contour_volume_cm3, flagged, reasons)."""
        if not job.is_audit or job.status != Job.Status.SUCCEEDED:
            return None
        return services.audit_report(job.result_path)

    @extend_schema_field(serializers.DictField(allow_null=True))
    def get_rtstruct_check(self, job: Job) -> dict | None:
        """The RTSTRUCT read back and compared with the label map before it was offered."""
        if not job.rtstruct_roundtrip:
            return None
        dice = {name: round(float(v), 4) for name, v in job.rtstruct_roundtrip.items()}
        return {"threshold": services.roundtrip_threshold(job.result_path), "min_dice": min(dice.values()), "dice": dice}

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_viewer(self, job: Job) -> str | None:
        return reverse("job-viewer", args=[job.id]) if job.status == Job.Status.SUCCEEDED else None


class AccessEventSerializer(serializers.ModelSerializer):
    """One entry of the access audit log (ids only, never a scan's or a file's name)."""

    class Meta:
        model = AccessEvent
        fields = ["id", "created", "username", "action", "object_type", "object_id", "filename", "team", "client_ip"]
        read_only_fields = fields
