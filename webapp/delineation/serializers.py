"""API representations of scans, job requests, patients, teams, revisions and the access
log (a job itself: ``job_serializers``)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import exceptions, serializers

from webapp.delineation import rules, sharing
from webapp.delineation.models import AccessEvent, Job, Patient, Revision, Scan, Team
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
        return self._owned(scan, "start a job on")

    def validate_planning_scan(self, scan: Scan) -> Scan:
        """The planning contours are carried only between scans the requester owns (a shared one: 403)."""
        return self._owned(scan, "propagate the contours of")

    def _owned(self, scan: Scan, what: str) -> Scan:
        try:
            sharing.check_owner(scan, self.context["request"].user, what)
        except sharing.SharingRefused as exc:
            raise exceptions.PermissionDenied(exc.message) from None
        return scan

    def validate(self, attrs: dict) -> dict:
        try:
            return rules.check_request(attrs)
        except rules.RequestRefused as exc:
            raise serializers.ValidationError(exc.errors) from None


def propagation_fields(validated: dict) -> dict:
    """The propagation fields of a validated ``JobCreateSerializer`` request, for ``tasks.queue_job``."""
    if validated.get("kind") != Job.Kind.PROPAGATE:
        return {}
    return {
        "planning_scan": validated["planning_scan"],
        "contours_rtstruct": validated.get("contours_rtstruct") or "",
        "contours_job": validated.get("contours_job"),
    }


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
            for o in rules.structure_sets(scan.preflight if isinstance(scan.preflight, dict) else None)
        ]


class PatientSerializer(serializers.ModelSerializer):
    scans = PatientScanSerializer(many=True, read_only=True)

    class Meta:
        model = Patient
        fields = ["id", "patient_id", "label", "created", "scans"]
        read_only_fields = ["id", "patient_id", "created", "scans"]


class AccessEventSerializer(serializers.ModelSerializer):
    """One entry of the access log (ids only, never a scan's or a file's name); a purge of
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
