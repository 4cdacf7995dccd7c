"""REST API (mounted under /api/). Every scan and job is looked up through
``Scan.objects.visible_to`` / ``Job.objects.visible_to`` (the owner's, and those shared
with one of the user's teams), so another user's scan or job is simply not found (404),
never forbidden. A team member who sees a shared scan gets 403 with a message for what
only its owner does: queue a job (a propagation too), set its patient, save a propagation's
choices, share, unshare, delete. Patients are not shared: only their owner finds them."""

from __future__ import annotations

import logging
import re
import uuid

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import generics, mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from webapp.delineation import audit, revisions, services, sharing, tasks
from webapp.delineation.models import AccessEvent, Job, Patient, Revision, Scan, Team
from webapp.delineation.patients import patient_for
from webapp.delineation.serializers import (
    AccessEventSerializer,
    ApproveSerializer,
    ChoicesSerializer,
    JobCreateSerializer,
    JobSerializer,
    PatientSerializer,
    ResultSendSerializer,
    RevisionSerializer,
    ScanPatientSerializer,
    ScanSerializer,
    ScanUploadSerializer,
    SendRequestSerializer,
    ShareSerializer,
    TeamSerializer,
    propagation_fields,
)
from webapp.delineation.uploads import UploadError, accept_upload, refusal_of

_DETAIL = inline_serializer("Detail", {"detail": serializers.CharField()})
_REVISION = OpenApiParameter(
    "revision", int, description="A revision of the label map (0: the model's output); default: the latest."
)
logger = logging.getLogger(__name__)


def _detail(message: str, code: int) -> Response:
    return Response({"detail": message}, status=code)


# The outputs a planning system imports: a job outside its domain needs an acknowledgement.
ACKNOWLEDGED_OUTPUTS = ("rtstruct.dcm", "seg.dcm")


class ScanViewSet(
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Uploaded scans: yours and those shared with one of your teams. The original files are stored unchanged."""

    serializer_class = ScanSerializer
    parser_classes = [MultiPartParser, FormParser, JSONParser]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Scan.objects.none()
        return (
            Scan.objects.visible_to(self.request.user)
            .select_related("owner", "patient")
            .prefetch_related("jobs", "shared_with")
        )

    @extend_schema(
        request=ScanPatientSerializer, responses={200: ScanSerializer, 400: OpenApiTypes.OBJECT, 403: _DETAIL}
    )
    def partial_update(self, request: Request, *args, **kwargs) -> Response:
        """Set the scan's patient by Patient ID (entered for a NIfTI scan, or correcting the DICOM
        one); the patient is created among yours if new. An empty Patient ID ungroups the scan.
        Only the scan's owner does (a team member it is shared with gets 403)."""
        scan = self.get_object()
        try:
            sharing.check_owner(scan, request.user, "set the patient of")
        except sharing.SharingRefused as exc:
            return _detail(exc.message, exc.status)
        data = ScanPatientSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        scan.patient = patient_for(
            request.user, data.validated_data["patient_id"], data.validated_data.get("patient_label", "")
        )
        scan.save(update_fields=["patient"])
        return Response(ScanSerializer(scan, context={"request": request}).data)

    @extend_schema(
        request={"multipart/form-data": ScanUploadSerializer},
        responses={201: ScanSerializer, 400: _DETAIL, 413: _DETAIL},
        description="Upload a scan: one field `file` (a .zip of one DICOM series, or a .nii/.nii.gz), "
        "or several fields `files` (the DICOM files of a folder) with their relative `paths` in the same order. "
        "With `deidentify=true` the DICOM files are de-identified (DICOM PS3.15 Annex E Basic Profile) before they "
        "are stored, and the files as sent are not kept.",
    )
    def create(self, request: Request, *args, **kwargs) -> Response:
        received = request.FILES  # reading the body applies the size and file-count limits while it streams
        refusal = refusal_of(request)
        if refusal is not None:
            return _detail(refusal.message, refusal.status)
        unexpected = sorted(set(received) - {"file", "files"})
        if unexpected:
            return _detail(
                f"Unexpected file field(s): {', '.join(unexpected)}. Use 'file' for a zip or NIfTI file, "
                "or 'files' for the files of a folder.",
                400,
            )
        singles = request.FILES.getlist("file")
        if len(singles) > 1:
            return _detail("Send one file in 'file'; for the files of a folder use 'files'.", 400)
        try:
            deidentify = serializers.BooleanField().to_internal_value(
                request.data.get("deidentify", settings.DELINEO_DEIDENTIFY_DEFAULT)
            )
        except serializers.ValidationError:
            return _detail("'deidentify' must be true or false.", 400)
        try:
            scan = accept_upload(
                request.user,
                singles[0] if singles else None,
                request.FILES.getlist("files"),
                request.data.getlist("paths") if hasattr(request.data, "getlist") else [],
                name=str(request.data.get("name", "")),
                patient_id=str(request.data.get("patient_id", "")),
                patient_label=str(request.data.get("patient_label", "")),
                deidentify=deidentify,
            )
        except UploadError as exc:
            return _detail(exc.message, exc.status)
        audit.record(request, AccessEvent.Action.UPLOAD, scan)
        return Response(ScanSerializer(scan, context={"request": request}).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={204: None, 403: _DETAIL, 409: _DETAIL})
    def destroy(self, request: Request, *args, **kwargs) -> Response:
        """Delete a scan, its jobs and every file of it on disk. Its queued jobs go with it (their
        task finds no job and does nothing); a scan with a running job is refused (409). Only
        its owner deletes it (a team member it is shared with gets 403)."""
        scan = self.get_object()
        try:
            sharing.check_owner(scan, request.user, "delete")
        except sharing.SharingRefused as exc:
            return _detail(exc.message, exc.status)
        with transaction.atomic():
            # Locked, so that no worker starts one of its queued jobs between the check and the delete.
            # A propagation reads its planning scan too.
            jobs = list(
                Job.objects.select_for_update()
                .filter(Q(scan=scan) | Q(planning_scan=scan))
                .values_list("status", flat=True)
            )
            if Job.Status.RUNNING in jobs:
                return _detail("A job is still running on this scan; delete it when the job has finished.", 409)
            audit.record(request, AccessEvent.Action.DELETE, scan)
            scan.delete()  # its folder goes too (signal in models.py)
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _sharing(self, request: Request, change) -> Response:
        scan = self.get_object()
        try:
            change(request, scan, request.data.get("team", ""))  # ShareSerializer, checked by ``sharing``
        except sharing.SharingRefused as exc:
            return _detail(exc.message, exc.status)
        scan = self.get_queryset().get(pk=scan.pk)
        return Response(ScanSerializer(scan, context={"request": request}).data)

    @extend_schema(request=ShareSerializer, responses={200: ScanSerializer, 400: _DETAIL, 403: _DETAIL})
    @action(
        detail=True,
        methods=["post"],
        url_path="share",
        url_name="share",
        parser_classes=[JSONParser, FormParser, MultiPartParser],
    )
    def share(self, request: Request, pk: str | None = None) -> Response:
        """Share the scan, its jobs and their files with one of your teams: its members may view
        and download them, not queue jobs, share or delete. Owner only; recorded as ``share``."""
        return self._sharing(request, sharing.share)

    @extend_schema(request=ShareSerializer, responses={200: ScanSerializer, 400: _DETAIL, 403: _DETAIL})
    @action(
        detail=True,
        methods=["post"],
        url_path="unshare",
        url_name="unshare",
        parser_classes=[JSONParser, FormParser, MultiPartParser],
    )
    def unshare(self, request: Request, pk: str | None = None) -> Response:
        """Stop sharing the scan with a team: its members get 404 on it, its jobs and files
        again. Owner only; recorded as ``unshare``."""
        return self._sharing(request, sharing.unshare)


class JobViewSet(mixins.CreateModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Delineation jobs (on your scans and those shared with your teams): create one on a
    scan of yours, poll its status, download its results."""

    serializer_class = JobSerializer
    parser_classes = [JSONParser, FormParser, MultiPartParser]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Job.objects.none()
        queryset = (
            Job.objects.visible_to(self.request.user)
            .select_related("scan", "scan__owner", "planning_scan")
            .prefetch_related("sends", "revisions")
        )
        scan = self.request.query_params.get("scan")
        if scan and self.action == "list":
            try:
                queryset = queryset.filter(scan_id=uuid.UUID(scan))
            except ValueError:
                queryset = queryset.none()
        return queryset

    @extend_schema(
        request=JobCreateSerializer,
        responses={
            201: JobSerializer,
            200: OpenApiResponse(JobSerializer, description="The same job (scan, model, series, kind, planning scan and contours) was already "
                                 "queued or running: that job, and nothing new is queued."),
            400: OpenApiTypes.OBJECT,
            403: _DETAIL,
        },
    )
    def create(self, request: Request, *args, **kwargs) -> Response:
        """Queue a job. Sending the same request again while its job is queued or running
        (a double click, a retried POST) returns that job with 200 instead of a second one."""
        data = JobCreateSerializer(data=request.data, context={"request": request})
        data.is_valid(raise_exception=True)
        scan = data.validated_data["scan"]
        job, created = tasks.queue_job(
            request.user,
            scan,
            data.validated_data["model"],
            data.validated_data["series"],
            data.validated_data["kind"],
            **propagation_fields(data.validated_data),
        )
        if created:
            audit.record(request, AccessEvent.Action.QUEUE, job)
        job.refresh_from_db()
        return Response(
            JobSerializer(job, context={"request": request}).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    @extend_schema(parameters=[OpenApiParameter("scan", OpenApiTypes.UUID, description="Only the jobs of this scan.")])
    def list(self, request: Request, *args, **kwargs) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(
        request=SendRequestSerializer,
        responses={
            202: ResultSendSerializer,
            200: OpenApiResponse(ResultSendSerializer, description="The same send is already queued: that one."),
            400: _DETAIL,
            403: _DETAIL,
            409: _DETAIL,
        },
    )
    @action(detail=True, methods=["post"], url_path="send", url_name="send")
    def send(self, request: Request, pk: str | None = None) -> Response:
        """Send the job's RTSTRUCT to one of your DICOM destinations (C-STORE, or STOW-RS);
        its progress is in the job's ``sends``. Owner of the scan only; recorded as ``send``."""
        from webapp.delineation.dicom import send as dicom_send

        job = self.get_object()
        data = SendRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            acknowledged = request.query_params.get("acknowledge") == Job.ACKNOWLEDGE_OUTSIDE_DOMAIN
            record, created = dicom_send.send_on_request(
                job, request.user, data.validated_data["destination"], acknowledged
            )
        except dicom_send.SendRefused as exc:
            return _detail(exc.message, exc.status)
        if created:
            if job.outside_domain:
                audit.record(request, AccessEvent.Action.ACKNOWLEDGE, job, filename=record.filename)
            audit.record(request, AccessEvent.Action.SEND, job, filename=record.filename)
        record.refresh_from_db()
        code = status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK
        return Response(ResultSendSerializer(record).data, status=code)

    def _result_file(self, name: str) -> tuple[Job, Response | None]:
        job = self.get_object()
        if job.status == Job.Status.FAILED:
            return job, _detail(f"The job failed, so it has no results: {job.error}", 409)
        if job.status != Job.Status.SUCCEEDED or job.result_path is None:
            return job, _detail(f"The job has not finished yet (status: {job.status}); try again later.", 409)
        return job, None

    def _download(
        self, job: Job, filename: str, content_type: str, checksums: dict[str, str] | None = None
    ) -> FileResponse | Response:
        """The output ``filename`` of a succeeded job, if it still matches the SHA-256 recorded
        when the job finished; otherwise 409 with a message (and the job id in the log). Outputs
        are renamed into place whole, so the file opened is never a partial one."""
        try:
            recorded = job.checksums if checksums is None else checksums
            handle = services.open_verified(job.result_path, filename, recorded)
        except services.DamagedOutput as exc:
            logger.error("job %s: stored output refused: %s", job.id, exc)
            return _detail(
                f"The stored result {filename} of this job is damaged: it no longer matches the file the job "
                "wrote (its SHA-256 checksum differs or it is missing), so it is not offered. "
                "Run the job again on the same scan (start a new job).",
                409,
            )
        audit.record(self.request, AccessEvent.Action.DOWNLOAD, job, filename=filename)
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", job.scan.name).strip("._")[:80] or "scan"
        served = filename.replace("revisions/", "revision").replace("/", "_")  # revisions/2/x: revision2_x
        return FileResponse(handle, as_attachment=True, filename=f"{safe}_{served}", content_type=content_type)

    def _revision(self, job: Job) -> tuple[Revision | None, Response | None]:
        """The revision asked for with ``?revision=N`` (default: the latest), or a 400 answer."""
        try:
            return revisions.find(job, self.request.query_params.get("revision")), None
        except revisions.EditError as exc:
            return None, _detail(exc.message, 400)

    @extend_schema(
        parameters=[_REVISION],
        responses={
            (200, "application/gzip"): OpenApiResponse(OpenApiTypes.BINARY, description="uint8 label map, NIfTI"),
            400: _DETAIL,
            409: _DETAIL,
        },
    )
    @action(detail=True, methods=["get"], url_path="labels.nii.gz", url_name="labels")
    def labels(self, request: Request, pk: str | None = None):
        """The label map (uint8, on the grid of the input image) as NIfTI: of the latest revision, or
        of ``?revision=N`` (0: the model's output)."""
        job, problem = self._result_file("labels.nii.gz")
        if problem:
            return problem
        revision, problem = self._revision(job)
        if problem:
            return problem
        if revision.number == 0:
            return self._download(job, "labels.nii.gz", "application/gzip")
        return self._download(job, revision.labels_file, "application/gzip", revision.checksums)

    @extend_schema(
        parameters=[_REVISION],
        responses={
            (200, "application/dicom"): OpenApiResponse(OpenApiTypes.BINARY, description="RT Structure Set"),
            400: _DETAIL,
            404: _DETAIL,
            409: _DETAIL,
        },
    )
    @action(detail=True, methods=["get"], url_path="rtstruct.dcm", url_name="rtstruct")
    def rtstruct(self, request: Request, pk: str | None = None):
        """The RTSTRUCT referencing the uploaded DICOM series (for NIfTI input: the CT
        exported as DICOM, ``ct_dicom.zip``), of the latest revision or of ``?revision=N``. It
        passed its round-trip check. An approved revision's says APPROVED with the reviewer;
        the structures corrected since the model's output have ROI Generation Algorithm MANUAL."""
        return self._revision_export("rtstruct.dcm", "RTSTRUCT")

    def _revision_export(self, filename: str, what: str):
        """``filename`` of the revision asked for (``?revision=N``, default: the latest); the
        model's output for revision 0 (``revisions.export_of``)."""
        job, problem = self._result_file(filename)
        if problem:
            return problem
        revision, problem = self._revision(job)
        if problem:
            return problem
        name, checksums = filename, job.checksums
        if revision.number > 0 or revision.is_approved:
            if not (job.result_path / filename).exists() and filename not in job.checksums:
                return self._optional_download(filename, what, "application/dicom")  # none for the model's either
            try:
                name, checksums = revisions.export_of(job, revision, filename)
            except services.DelineationError as exc:
                logger.warning("job %s: %s of revision %s not written", job.id, filename, revision.number)
                return _detail(f"The {what} of revision {revision.number} could not be written: {exc.message}", 409)
        if name == filename:
            return self._optional_download(filename, what, "application/dicom")
        problem = self._unacknowledged(job, filename, what)
        if problem:
            return problem
        return self._download(job, name, "application/dicom", checksums)

    @extend_schema(
        parameters=[_REVISION],
        responses={
            (200, "application/dicom"): OpenApiResponse(OpenApiTypes.BINARY, description="DICOM Segmentation"),
            400: _DETAIL,
            404: _DETAIL,
            409: _DETAIL,
        },
    )
    @action(detail=True, methods=["get"], url_path="seg.dcm", url_name="seg")
    def seg(self, request: Request, pk: str | None = None):
        """The structures as a DICOM Segmentation (SEG) referencing the same series as the RTSTRUCT,
        of the latest revision or of ``?revision=N``; corrected structures' segments are SEMIAUTOMATIC."""
        return self._revision_export("seg.dcm", "DICOM SEG")

    @extend_schema(
        responses={
            (200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY, description="CT Image Storage files"),
            404: _DETAIL,
            409: _DETAIL,
        }
    )
    @action(detail=True, methods=["get"], url_path="ct_dicom.zip", url_name="ct-dicom")
    def ct_dicom(self, request: Request, pk: str | None = None):
        """NIfTI input only: the CT written as a DICOM series (new UIDs, anonymous patient),
        which the RTSTRUCT and SEG reference, so a planning system can import all three."""
        return self._optional_download("ct_dicom.zip", "DICOM export of the CT", "application/zip")

    @extend_schema(
        responses={
            (200, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT, description="The contour audit"),
            404: _DETAIL,
            409: _DETAIL,
        }
    )
    @action(detail=True, methods=["get"], url_path="audit.json", url_name="audit-json")
    def audit_json(self, request: Request, pk: str | None = None):
        """Contour audit jobs only: the audit as the engine wrote it (``engine.infer.audit``),
        one entry per audited ROI with its QAM score, Dice, MSD and HD95 against the model."""
        return self._optional_download("audit.json", "contour audit", "application/json")

    @extend_schema(
        responses={
            (200, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT, description="The propagation report"),
            404: _DETAIL,
            409: _DETAIL,
        }
    )
    @action(detail=True, methods=["get"], url_path="propagation.json", url_name="propagation-json")
    def propagation_json(self, request: Request, pk: str | None = None):
        """Contour propagation jobs only: ``report.json`` as the engine wrote it (model, per structure
        volume_ml, Dice, MSD and HD95 in mm against the direct segmentation, folding inside, warning;
        folding_percent, timings)."""
        return self._optional_download("report.json", "propagation report", "application/json")

    @extend_schema(
        responses={
            (200, "application/gzip"): OpenApiResponse(
                OpenApiTypes.BINARY, description="(I, J, K, 3) float32 displacement in mm, RAS, daily-scan grid"
            ),
            404: _DETAIL,
            409: _DETAIL,
        }
    )
    @action(detail=True, methods=["get"], url_path="ddf.nii.gz", url_name="ddf")
    def ddf(self, request: Request, pk: str | None = None):
        """Contour propagation jobs only: the dense displacement field on the daily scan's grid, NIfTI
        vector (I, J, K, 3), mm in RAS: the daily-scan point p corresponds to the planning-scan point p + u(p)."""
        return self._optional_download("ddf.nii.gz", "displacement field", "application/gzip")

    @extend_schema(
        request=ChoicesSerializer, responses={200: JobSerializer, 400: OpenApiTypes.OBJECT, 403: _DETAIL, 409: _DETAIL}
    )
    @action(detail=True, methods=["post"], url_path="choices", url_name="choices")
    def choices(self, request: Request, pk: str | None = None) -> Response:
        """Contour propagation jobs only: keep, per structure, the propagated contours or the model's
        direct segmentation of the daily scan. Saved on the job; the RTSTRUCT for the daily scan
        (``final_rtstruct.dcm``) is rebuilt from them at once, so its problems show here. Only the
        scan's owner chooses (a team member it is shared with gets 403)."""
        job, problem = self._result_file("choices")
        if not job.is_propagation:
            return _detail("Only a contour propagation has contours to choose between.", 404)
        try:
            sharing.check_owner(job.scan, request.user, "choose the contours kept for")
        except sharing.SharingRefused as exc:
            return _detail(exc.message, exc.status)
        if problem:
            return problem
        data = ChoicesSerializer(data=request.data, context={"job": job})
        data.is_valid(raise_exception=True)
        with transaction.atomic():
            job = Job.objects.select_for_update().select_related("scan").get(pk=job.pk)  # one rebuild at a time
            choices = {**job.choices, **data.validated_data["choices"]}
            problem = self._build_final(job, choices)
            if problem:
                return problem
        job.refresh_from_db()
        return Response(JobSerializer(job, context={"request": request}).data)

    def _build_final(self, job: Job, choices: dict[str, str]) -> Response | None:
        """Write the final RTSTRUCT from ``choices`` and record them with its checksums (in the caller's
        transaction, the job row locked); a 409 response when it cannot be written."""
        try:
            written = services.write_final_rtstruct(
                job.result_path, job.scan.engine_input, job.series_key, choices, job.model_name, job.weights_sha256
            )
        except services.DelineationError as exc:
            logger.warning("job %s: final RTSTRUCT not written", job.id)
            return _detail(f"The RTSTRUCT for the daily scan could not be written: {exc.message}", 409)
        kept = {k: v for k, v in job.checksums.items() if not k.startswith(f"{services.FINAL_DIR}/")}
        job.choices, job.checksums = choices, {**kept, **written}
        job.save(update_fields=["choices", "checksums"])
        return None

    @extend_schema(
        responses={
            (200, "application/dicom"): OpenApiResponse(OpenApiTypes.BINARY, description="RT Structure Set"),
            404: _DETAIL,
            409: _DETAIL,
        }
    )
    @action(detail=True, methods=["get"], url_path="final_rtstruct.dcm", url_name="final-rtstruct")
    def final_rtstruct(self, request: Request, pk: str | None = None):
        """Contour propagation jobs only: the RTSTRUCT for the daily scan with, per structure, the
        contours chosen (``choices``; propagated where none was chosen), referencing the daily series."""
        job, problem = self._result_file(services.FINAL_RTSTRUCT)
        if not job.is_propagation:
            return _detail("Only a contour propagation has an RTSTRUCT built from chosen contours.", 404)
        if problem:
            return problem
        if services.FINAL_RTSTRUCT not in job.checksums:
            with transaction.atomic():
                job = Job.objects.select_for_update().select_related("scan").get(pk=job.pk)
                if services.FINAL_RTSTRUCT not in job.checksums:
                    problem = self._build_final(job, job.choices)
                    if problem:
                        return problem
        return self._download(job, services.FINAL_RTSTRUCT, "application/dicom")

    def _unacknowledged(self, job: Job, filename: str, what: str) -> Response | None:
        """409 for the RTSTRUCT or SEG (of any revision) of a job outside its model's domain
        unless the request acknowledges the warning; an acknowledgement is recorded."""
        if filename not in ACKNOWLEDGED_OUTPUTS or not job.outside_domain:
            return None
        # A planning system would import these contours like any others: the physician
        # must say they read why the scan looks outside the model's domain.
        if self.request.query_params.get("acknowledge") != Job.ACKNOWLEDGE_OUTSIDE_DOMAIN:
            return _detail(
                f"{job.domain_warning}. To download the {what} anyway, acknowledge "
                f"this warning (add ?acknowledge={Job.ACKNOWLEDGE_OUTSIDE_DOMAIN}).",
                409,
            )
        audit.record(self.request, AccessEvent.Action.ACKNOWLEDGE, job, filename=filename)
        return None

    def _optional_download(self, filename: str, what: str, content_type: str):
        job, problem = self._result_file(filename)
        if problem:
            return problem
        problem = self._unacknowledged(job, filename, what)
        if problem:
            return problem
        path = job.result_path / filename
        if not path.exists() and filename not in job.checksums:  # a recorded output gone missing is damage
            why = " ".join(job.notes) if job.notes else ""
            if filename == "ct_dicom.zip" and job.input_kind == "dicom":
                why = "The scan was uploaded as DICOM: the RTSTRUCT and SEG reference the uploaded series."
            if filename == "audit.json" and not job.is_audit:
                why = "This job is not a contour audit."
            elif filename in ("report.json", "ddf.nii.gz") and not job.is_propagation:
                why = "This job is not a contour propagation."
            elif job.is_audit:
                why = "A contour audit writes the audit and the model's label map, not the delineation's DICOM files."
            return _detail(f"No {what} was written for this job. {why}".strip(), 404)
        return self._download(job, filename, content_type)

    @extend_schema(
        parameters=[_REVISION],
        responses={
            (200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY, description="structures/<name>.nii.gz"),
            400: _DETAIL,
            404: _DETAIL,
            409: _DETAIL,
        },
    )
    @action(detail=True, methods=["get"], url_path="structures.zip", url_name="structures-zip")
    def structures_zip(self, request: Request, pk: str | None = None):
        """One NIfTI mask per structure (uint8 0/1, input grid) plus structures.json, zipped: of the
        latest revision, or of ``?revision=N``."""
        job, problem = self._result_file("structures.zip")
        if problem:
            return problem
        if job.is_audit:
            return _detail(
                "A contour audit writes the audit and the model's label map, not one mask per structure.", 404
            )
        if not job.checksums and not (job.result_path / "structures.zip").exists():
            # A job finished before the zip was built with the outputs (and checksums recorded).
            services.structures_zip(job.result_path, job.result_path / "structures.zip")
        revision, problem = self._revision(job)
        if problem:
            return problem
        name, checksums = revisions.export_of(job, revision, "structures.zip")
        return self._download(job, name, "application/zip", checksums)

    @extend_schema(
        parameters=[
            OpenApiParameter("plane", str, enum=[*services.PLANES], default="axial"),
            OpenApiParameter("index", int, description="Slice index; default: through the structures' centre."),
            _REVISION,
        ],
        responses={200: OpenApiTypes.OBJECT, 400: _DETAIL, 409: _DETAIL},
    )
    @action(detail=True, methods=["get"], url_path="slice", url_name="slice")
    def slice_view(self, request: Request, pk: str | None = None) -> Response:
        """One slice of the CT (int16 HU) and label map (uint8), base64, little-endian,
        rows x columns in display orientation (radiological; see ``orientation``),
        with the pixel spacing (row, column) in mm for the aspect ratio."""
        job, problem = self._result_file("slice")
        if problem:
            return problem
        plane = request.query_params.get("plane", "axial")
        raw_index = request.query_params.get("index")
        try:
            index = int(raw_index) if raw_index not in (None, "") else None
        except ValueError:
            return _detail("index must be an integer", 400)
        revision, problem = self._revision(job)
        if problem:
            return problem
        labels = None if revision.number == 0 else revisions.labels_of(job, revision)
        try:
            body = services.slice_of(job.result_path, plane, index, labels)
        except ValueError as exc:
            return _detail(str(exc), 400)
        return Response({**body, "revision": revision.number})

    def _edited_job(self, request: Request, what: str) -> tuple[Job, Response | None]:
        """The job, and a refusal: 403 for a team member (owners edit and approve), 400 for a job
        without contours to edit."""
        job = self.get_object()
        try:
            sharing.check_owner(job.scan, request.user, what)
            revisions.check_editable(job)
        except sharing.SharingRefused as exc:
            return job, _detail(exc.message, exc.status)
        except revisions.EditError as exc:
            return job, _detail(exc.message, 400)
        return job, None

    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses={201: RevisionSerializer, 400: _DETAIL, 403: _DETAIL},
        description="Correct the contours: the edit is applied to the latest revision and saved as a new "
        "one (the model's output stays revision 0). Modes: `add` and `erase` (`structure`, `plane`, `index`, "
        "and `polygon` [[row, column], ...] in the slice endpoint's pixels or `mask`, run lengths over the "
        "slice's pixels row by row, outside first); `delete` and `interpolate` (`structure`, `plane`, `first`, "
        "`last`); `restore` (`revision`: undo back to it); `direct` (`structure`; a contour propagation only: take the "
        "model's direct segmentation of the daily scan). Owner of the scan only; recorded as `edit`.",
    )
    @action(detail=True, methods=["post"], url_path="edits", url_name="edits")
    def edits(self, request: Request, pk: str | None = None) -> Response:
        job, problem = self._edited_job(request, "edit the contours of")
        if problem:
            return problem
        try:
            revision = revisions.apply_edit(job, request.user, request.data)
        except revisions.EditError as exc:
            return _detail(exc.message, 400)
        audit.record(request, AccessEvent.Action.EDIT, job, filename=revision.labels_file)
        return Response(RevisionSerializer(revision).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: RevisionSerializer(many=True), 409: _DETAIL})
    @action(detail=True, methods=["get"], url_path="revisions", url_name="revisions")
    def revision_list(self, request: Request, pk: str | None = None) -> Response:
        """The revisions of the job's label map, oldest first: 0 is the model's output."""
        job, problem = self._result_file("revisions")
        if problem:
            return problem
        revisions.original(job)
        return Response(RevisionSerializer(job.revisions.select_related("parent"), many=True).data)

    @extend_schema(request=ApproveSerializer, responses={200: RevisionSerializer, 400: _DETAIL, 403: _DETAIL})
    @action(detail=True, methods=["post"], url_path="approve", url_name="approve")
    def approve(self, request: Request, pk: str | None = None) -> Response:
        """Approve the latest revision, as its reviewer, with an optional ``comment``: its RTSTRUCT then
        says APPROVED with your name and the time. An edit after it makes a new, unapproved revision.
        Owner of the scan only; recorded as ``approve``."""
        job, problem = self._edited_job(request, "approve the contours of")
        if problem:
            return problem
        data = ApproveSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        revision = revisions.approve(job, request.user, data.validated_data["comment"])
        audit.record(request, AccessEvent.Action.APPROVE, job, filename=revision.labels_file)
        return Response(RevisionSerializer(revision).data)


class PatientViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Your patients, each with its scans (grouped by Patient ID). Another user's patient is not found (404)."""

    serializer_class = PatientSerializer
    parser_classes = [JSONParser, FormParser, MultiPartParser]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Patient.objects.none()
        return Patient.objects.filter(owner=self.request.user).prefetch_related("scans")

    def retrieve(self, request: Request, *args, **kwargs) -> Response:
        patient = self.get_object()
        audit.record(request, AccessEvent.Action.VIEW, patient)
        return Response(self.get_serializer(patient).data)

    @extend_schema(
        request=inline_serializer("PatientLabel", {"label": serializers.CharField(max_length=255, allow_blank=True)}),
        responses={200: PatientSerializer, 400: OpenApiTypes.OBJECT},
    )
    def partial_update(self, request: Request, *args, **kwargs) -> Response:
        """Change how the patient is shown (``label``); its Patient ID stays."""
        patient = self.get_object()
        data = PatientSerializer(patient, data={"label": request.data.get("label", "")}, partial=True)
        data.is_valid(raise_exception=True)
        data.save()
        return Response(PatientSerializer(patient).data)


class AccessEventList(generics.ListAPIView):
    """The access audit log, newest first (at most 1000 events): every event on the scans
    and jobs the requesting user owns, whoever acted (their team members' views and
    downloads included); staff see every event."""

    serializer_class = AccessEventSerializer
    LIMIT = 1000

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return AccessEvent.objects.none()
        events = AccessEvent.objects.all()
        user = self.request.user
        if not user.is_staff:
            events = events.filter(object_owner=user)
        return events[: self.LIMIT]


class TeamList(generics.ListAPIView):
    """The teams you are a member of, to share your scans with. An administrator creates teams
    and adds their members (Django admin, Teams)."""

    serializer_class = TeamSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Team.objects.none()
        return Team.objects.filter(members=self.request.user).prefetch_related("members")


class ModelsView(APIView):
    """The delineation models shipped with this server."""

    @extend_schema(
        responses=inline_serializer(
            "Model",
            {
                "name": serializers.CharField(),
                "structures": serializers.ListField(child=serializers.DictField()),
                "audit": serializers.BooleanField(help_text="It ships a contour-quality critic: it can audit."),
            },
            many=True,
        )
    )
    def get(self, request: Request) -> Response:
        return Response(services.model_cards())


class PropagationModelsView(APIView):
    """The contour propagation methods of this server: classical registrations and joint
    registration-segmentation models (``engine.infer.propagate.PROPAGATION_MODELS``)."""

    @extend_schema(responses=inline_serializer("PropagationModels", {"models": serializers.ListField()}))
    def get(self, request: Request) -> Response:
        return Response({"models": services.propagation_models()})
