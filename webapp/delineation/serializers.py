"""API representations of scans, jobs, patients, teams and the audit log."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import exceptions, serializers

from webapp.delineation import services, sharing
from webapp.delineation.models import AccessEvent, Job, Patient, ResultSend, Revision, Scan, Team
from webapp.delineation.patients import PatientIdError, clean_patient_id


class PatientBriefSerializer(serializers.ModelSerializer):
    class Meta:
        model = Patient
        fields = ["id", "patient_id", "label"]
        read_only_fields = fields


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
    patient = serializers.SerializerMethodField(
        help_text="The patient the scan is grouped under (your own patients only); null when it has none, "
        "and for a scan shared with you: a Patient ID identifies a person and stays with the scan's owner."
    )
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
            "patient",
        ]
        read_only_fields = fields

    @extend_schema_field(PatientBriefSerializer(allow_null=True))
    def get_patient(self, scan: Scan) -> dict | None:
        request = self.context.get("request")
        if scan.patient is None or request is None or not scan.is_owner(request.user):
            return None
        return PatientBriefSerializer(scan.patient).data

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
    patient_id = serializers.CharField(
        required=False,
        max_length=64,
        help_text="The patient's ID, grouping the scan with the patient's other scans. Needed for NIfTI "
        "(it has none); for DICOM the Patient ID of the files is used unless this is given. With 'deidentify' "
        "the files' Patient ID is replaced by a pseudonym for the upload: give the ID here to group the scan "
        "with the patient's other scans (it is kept on your patient, not written into the files).",
    )
    patient_label = serializers.CharField(
        required=False, max_length=255, help_text="How the patient is shown on your patient list (optional)."
    )
    deidentify = serializers.BooleanField(
        required=False,
        help_text="De-identify the DICOM files before they are stored (DICOM PS3.15 Annex E Basic Profile); "
        "the files as sent are not kept. Default: the server's DELINEO_DEIDENTIFY_DEFAULT (false unless set).",
    )


class ScanPatientSerializer(serializers.Serializer):
    """PATCH /api/scans/<id>/: the scan's patient, by Patient ID ("" takes the scan out of its patient)."""

    patient_id = serializers.CharField(max_length=64, allow_blank=True, trim_whitespace=True)
    patient_label = serializers.CharField(max_length=255, required=False, allow_blank=True)

    def validate_patient_id(self, value: str) -> str:
        try:
            return clean_patient_id(value)
        except PatientIdError as exc:
            raise serializers.ValidationError(str(exc)) from None


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


@extend_schema_field(OpenApiTypes.UUID)
class _OwnJobField(_OwnScanField):
    default_error_messages = {
        "does_not_exist": "No job with id {pk_value} (among your jobs).",
        "incorrect_type": "A job id (UUID) is expected.",
    }

    def get_queryset(self):
        return Job.objects.visible_to(self.context["request"].user)


class JobCreateSerializer(serializers.Serializer):
    scan = _OwnScanField(help_text="Id of one of your scans; for a propagation, the daily scan (fixed image).")
    model = serializers.CharField(
        max_length=100,
        help_text="A shipped model name, see GET /api/models/; for a propagation, one of GET /api/propagation-models/.",
    )
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
        "with a DICOM scan against the model; the model must ship a contour-quality critic ('audit' in /api/models/). "
        "'propagate': carry the contours of a planning scan of the same patient onto this (daily) scan.",
    )
    planning_scan = _OwnScanField(
        required=False, help_text="Propagation: the planning scan (moving image), of the same patient as 'scan'."
    )
    contours_rtstruct = serializers.CharField(
        max_length=64,
        required=False,
        allow_blank=True,
        help_text="Propagation: the planning contours as the SOP Instance UID of an RTSTRUCT in the planning "
        "upload (listed in its preflight report, 'other_objects').",
    )
    contours_job = _OwnJobField(
        required=False,
        help_text="Propagation: the planning contours as a succeeded delineation job of the planning scan "
        "(instead of contours_rtstruct).",
    )

    def validate_scan(self, scan: Scan) -> Scan:
        """A team member sees a shared scan but does not start jobs on it: 403, not 400."""
        try:
            sharing.check_owner(scan, self.context["request"].user, "start a job on")
        except sharing.SharingRefused as exc:
            raise exceptions.PermissionDenied(exc.message) from None
        return scan

    def validate_planning_scan(self, scan: Scan) -> Scan:
        """The planning contours are carried only between scans the requester owns (a shared one: 403)."""
        try:
            sharing.check_owner(scan, self.context["request"].user, "propagate the contours of")
        except sharing.SharingRefused as exc:
            raise exceptions.PermissionDenied(exc.message) from None
        return scan

    def validate(self, attrs: dict) -> dict:
        kind = attrs.get("kind", Job.Kind.SEGMENT)
        self._check_model(attrs["model"], kind)
        attrs["series"] = self._series(attrs)
        if kind == Job.Kind.AUDIT:
            self._check_audit(attrs["scan"], attrs["model"])
        if kind == Job.Kind.PROPAGATE:
            self._check_propagation(attrs)
        else:
            for field in ("planning_scan", "contours_rtstruct", "contours_job"):
                if attrs.get(field):
                    raise serializers.ValidationError({field: "Only a propagation (kind 'propagate') takes this."})
        return attrs

    def _check_propagation(self, attrs: dict) -> None:
        """Both scans of one patient of the user, different, each with one image series; the
        contours an RTSTRUCT of the planning upload or a succeeded delineation of the planning scan."""
        daily: Scan = attrs["scan"]
        planning: Scan | None = attrs.get("planning_scan")
        errors: dict[str, str] = {}
        if planning is None:
            errors["planning_scan"] = "Choose the planning scan whose contours are to be propagated."
        elif planning.pk == daily.pk:
            errors["planning_scan"] = "The planning scan and the daily scan must be two different scans."
        elif daily.patient_id is None or planning.patient_id is None:
            which = "daily" if daily.patient_id is None else "planning"
            errors["planning_scan"] = (
                f"The {which} scan has no patient: enter its Patient ID on its scan page, so that both scans "
                "are known to be of the same patient."
            )
        elif daily.patient_id != planning.patient_id:
            errors["planning_scan"] = (
                "The planning scan and the daily scan belong to different patients; "
                "contours are propagated between scans of one patient only."
            )
        for role, scan in (("planning_scan", planning), ("scan", daily)):
            report = scan.preflight if scan is not None and isinstance(scan.preflight, dict) else None
            if role not in errors and report and len(services.usable_series(report)) > 1:
                errors[role] = (
                    "This upload holds several image series; for a propagation upload the scan with one image series."
                )
        rtstruct, source = attrs.get("contours_rtstruct") or "", attrs.get("contours_job")
        if rtstruct and source is not None:
            errors["contours_rtstruct"] = "Give the planning contours once: an RTSTRUCT or a delineation job, not both."
        elif not rtstruct and source is None:
            errors["contours_rtstruct"] = (
                "Choose the planning contours: an RTSTRUCT of the planning upload (contours_rtstruct) or a finished "
                "delineation of the planning scan (contours_job)."
            )
        elif planning is not None and rtstruct:
            uids = [o.get("sop_instance_uid") for o in services.structure_sets(planning.preflight)]
            if rtstruct not in uids:
                errors["contours_rtstruct"] = "The planning upload holds no structure set (RTSTRUCT) with that UID." + (
                    "" if uids else " It holds none at all: choose a delineation of the planning scan instead."
                )
        elif planning is not None and source is not None:
            if source.scan_id != planning.pk:
                errors["contours_job"] = "That delineation is of another scan, not of the planning scan."
            elif source.kind != Job.Kind.SEGMENT:
                errors["contours_job"] = "Choose a delineation job; its result holds the contours to propagate."
            elif source.status != Job.Status.SUCCEEDED:
                errors["contours_job"] = f"That delineation has no result (status: {source.status})."
        if errors:
            raise serializers.ValidationError(errors)

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

    def _check_model(self, value: str, kind: str) -> None:
        propagation = kind == Job.Kind.PROPAGATE
        models = services.propagation_models() if propagation else services.available_models()
        what = "contour propagation method" if propagation else "delineation model"
        if value not in models:
            if not models:
                message = f"Unknown model {value!r}: no {what} is installed on this server."
            else:
                message = f"Unknown model {value!r}. Available {what}s: {', '.join(models)}."
            raise serializers.ValidationError({"model": message})


def propagation_fields(validated: dict) -> dict:
    """The propagation fields of a validated ``JobCreateSerializer`` request, for ``tasks.queue_job``."""
    if validated.get("kind") != Job.Kind.PROPAGATE:
        return {}
    return {
        "planning_scan": validated["planning_scan"],
        "contours_rtstruct": validated.get("contours_rtstruct") or "",
        "contours_job": validated.get("contours_job"),
    }


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
        # Built on first download from the physician's choices (all propagated until saved).
        links["final_rtstruct"] = file_url("api-job-final-rtstruct") if job.is_propagation else None
        return links

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
        report = services.propagation_report(job.result_path)
        if report is None:
            return None
        direct = services.direct_available(report)
        for s in report["structures"]:
            s["kept"] = job.choices.get(s.get("name"), "propagated")
            s["direct"] = s.get("name") in direct
        return report

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


class ChoicesSerializer(serializers.Serializer):
    """POST /api/jobs/<id>/choices/: per structure name, the contours to keep."""

    choices = serializers.DictField(
        child=serializers.ChoiceField(choices=services.CHOICES),
        help_text='{"<structure name>": "propagated" | "direct"}; structures not named keep their earlier choice '
        "(at first: propagated).",
    )

    def validate_choices(self, value: dict[str, str]) -> dict[str, str]:
        job: Job = self.context["job"]
        names = [s.get("name") for s in job.structures]
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise serializers.ValidationError(
                f"Not a structure of this propagation: {', '.join(unknown)}. Its structures: {', '.join(names)}."
            )
        direct = services.direct_available(services.propagation_report(job.result_path))
        without = sorted(name for name, kept in value.items() if kept == "direct" and name not in direct)
        if without:
            raise serializers.ValidationError(
                f"No direct segmentation of the daily scan to keep for: {', '.join(without)}. "
                "Keep the propagated contours (the model made no segmentation of these)."
            )
        return value


class PatientScanSerializer(serializers.ModelSerializer):
    """A scan of a patient, with the structure sets (RTSTRUCT) of its upload."""

    structure_sets = serializers.SerializerMethodField()

    class Meta:
        model = Scan
        fields = ["id", "name", "input_kind", "created", "structure_sets"]
        read_only_fields = fields

    @extend_schema_field(serializers.ListField(child=serializers.DictField()))
    def get_structure_sets(self, scan: Scan) -> list[dict]:
        """sop_instance_uid and rois of each RTSTRUCT of the upload (to use as planning contours)."""
        return [
            {"sop_instance_uid": o.get("sop_instance_uid"), "rois": o.get("rois") or []}
            for o in services.structure_sets(scan.preflight if isinstance(scan.preflight, dict) else None)
        ]


class PatientSerializer(serializers.ModelSerializer):
    scans = PatientScanSerializer(many=True, read_only=True)

    class Meta:
        model = Patient
        fields = ["id", "patient_id", "label", "created", "scans"]
        read_only_fields = ["id", "patient_id", "created", "scans"]


class AccessEventSerializer(serializers.ModelSerializer):
    """One entry of the access audit log (ids only, never a scan's or a file's name); a purge of
    old events has no object and the number of events it deleted in ``count``."""

    class Meta:
        model = AccessEvent
        fields = [
            "id",
            "created",
            "username",
            "action",
            "object_type",
            "object_id",
            "filename",
            "team",
            "client_ip",
            "count",
        ]
        read_only_fields = fields


class RevisionSerializer(serializers.ModelSerializer):
    """A revision of a job's label map: who made it (null for revision 0, the model's output),
    what the edit did, the structures it changed, per structure ``measures`` against the
    model's output (edited, Dice, added path length in mm, volume in cm3) and its approval."""

    author = serializers.CharField(source="author_name", read_only=True)
    parent = serializers.IntegerField(source="parent.number", allow_null=True, read_only=True)
    approved_by = serializers.CharField(source="reviewer_name", read_only=True)
    edited = serializers.ListField(source="edited_structures", child=serializers.CharField(), read_only=True)

    class Meta:
        model = Revision
        fields = [
            "number",
            "author",
            "created",
            "parent",
            "edit",
            "changed",
            "edited",
            "measures",
            "approved",
            "approved_by",
            "approval_comment",
        ]
        read_only_fields = fields


class ApproveSerializer(serializers.Serializer):
    """Body of ``POST /api/jobs/{id}/approve/``."""

    comment = serializers.CharField(required=False, allow_blank=True, max_length=1000, default="")
