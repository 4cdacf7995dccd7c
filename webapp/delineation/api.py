"""REST API (mounted under /api/). Every query is filtered by owner, so another user's
scan or job is simply not found (404), never forbidden."""

from __future__ import annotations

import logging
import re
import uuid

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

from webapp.delineation import audit, services, tasks
from webapp.delineation.models import AccessEvent, Job, Scan
from webapp.delineation.serializers import (
    AccessEventSerializer,
    JobCreateSerializer,
    JobSerializer,
    ScanSerializer,
    ScanUploadSerializer,
)
from webapp.delineation.uploads import UploadError, accept_upload, refusal_of

_DETAIL = inline_serializer("Detail", {"detail": serializers.CharField()})
logger = logging.getLogger(__name__)


def _detail(message: str, code: int) -> Response:
    return Response({"detail": message}, status=code)


class ScanViewSet(
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Uploaded scans. The original files are stored unchanged."""

    serializer_class = ScanSerializer
    parser_classes = [MultiPartParser, FormParser]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Scan.objects.none()
        return Scan.objects.filter(owner=self.request.user).prefetch_related("jobs")

    @extend_schema(
        request={"multipart/form-data": ScanUploadSerializer},
        responses={201: ScanSerializer, 400: _DETAIL, 413: _DETAIL},
        description="Upload a scan: one field `file` (a .zip of one DICOM series, or a .nii/.nii.gz), "
        "or several fields `files` (the DICOM files of a folder) with their relative `paths` in the same order.",
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
            scan = accept_upload(
                request.user,
                singles[0] if singles else None,
                request.FILES.getlist("files"),
                request.data.getlist("paths") if hasattr(request.data, "getlist") else [],
                name=str(request.data.get("name", "")),
            )
        except UploadError as exc:
            return _detail(exc.message, exc.status)
        audit.record(request, AccessEvent.Action.UPLOAD, scan)
        return Response(ScanSerializer(scan, context={"request": request}).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={204: None, 409: _DETAIL})
    def destroy(self, request: Request, *args, **kwargs) -> Response:
        """Delete a scan, its jobs and every file of it on disk. Its queued jobs go with it (their
        task finds no job and does nothing); a scan with a running job is refused (409)."""
        scan = self.get_object()
        with transaction.atomic():
            # Locked, so that no worker starts one of its queued jobs between the check and the delete.
            jobs = list(Job.objects.select_for_update().filter(scan=scan).values_list("status", flat=True))
            if Job.Status.RUNNING in jobs:
                return _detail("A job is still running on this scan; delete it when the job has finished.", 409)
            audit.record(request, AccessEvent.Action.DELETE, scan)
            scan.delete()  # its folder goes too (signal in models.py)
        return Response(status=status.HTTP_204_NO_CONTENT)


class JobViewSet(mixins.CreateModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Delineation jobs: create one on a scan, poll its status, download its results."""

    serializer_class = JobSerializer
    parser_classes = [JSONParser, FormParser, MultiPartParser]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Job.objects.none()
        queryset = Job.objects.filter(owner=self.request.user).select_related("scan")
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
            200: OpenApiResponse(JobSerializer, description="The same job (scan, model, series, kind) was already "
                                 "queued or running: that job, and nothing new is queued."),
            400: OpenApiTypes.OBJECT,
        },
    )
    def create(self, request: Request, *args, **kwargs) -> Response:
        """Queue a job. Sending the same request again while its job is queued or running
        (a double click, a retried POST) returns that job with 200 instead of a second one."""
        data = JobCreateSerializer(data=request.data, context={"request": request})
        data.is_valid(raise_exception=True)
        scan = data.validated_data["scan"]
        job, created = tasks.queue_job(
            request.user, scan, data.validated_data["model"], data.validated_data["series"], data.validated_data["kind"]
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

    def _result_file(self, name: str) -> tuple[Job, Response | None]:
        job = self.get_object()
        if job.status == Job.Status.FAILED:
            return job, _detail(f"The job failed, so it has no results: {job.error}", 409)
        if job.status != Job.Status.SUCCEEDED or job.result_path is None:
            return job, _detail(f"The job has not finished yet (status: {job.status}); try again later.", 409)
        return job, None

    def _download(self, job: Job, filename: str, content_type: str) -> FileResponse | Response:
        """The output ``filename`` of a succeeded job, if it still matches the SHA-256 recorded
        when the job finished; otherwise 409 with a message (and the job id in the log). Outputs
        are renamed into place whole, so the file opened is never a partial one."""
        try:
            handle = services.open_verified(job.result_path, filename, job.checksums)
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
        return FileResponse(handle, as_attachment=True, filename=f"{safe}_{filename}", content_type=content_type)

    @extend_schema(
        responses={
            (200, "application/gzip"): OpenApiResponse(OpenApiTypes.BINARY, description="uint8 label map, NIfTI"),
            409: _DETAIL,
        }
    )
    @action(detail=True, methods=["get"], url_path="labels.nii.gz", url_name="labels")
    def labels(self, request: Request, pk: str | None = None):
        """The label map (uint8, on the grid of the input image) as NIfTI."""
        job, problem = self._result_file("labels.nii.gz")
        if problem:
            return problem
        return self._download(job, "labels.nii.gz", "application/gzip")

    @extend_schema(
        responses={
            (200, "application/dicom"): OpenApiResponse(OpenApiTypes.BINARY, description="RT Structure Set"),
            404: _DETAIL,
            409: _DETAIL,
        }
    )
    @action(detail=True, methods=["get"], url_path="rtstruct.dcm", url_name="rtstruct")
    def rtstruct(self, request: Request, pk: str | None = None):
        """The RTSTRUCT referencing the uploaded DICOM series (for NIfTI input: the CT
        exported as DICOM, ``ct_dicom.zip``). It passed its round-trip check."""
        return self._optional_download("rtstruct.dcm", "RTSTRUCT", "application/dicom")

    @extend_schema(
        responses={
            (200, "application/dicom"): OpenApiResponse(OpenApiTypes.BINARY, description="DICOM Segmentation"),
            404: _DETAIL,
            409: _DETAIL,
        }
    )
    @action(detail=True, methods=["get"], url_path="seg.dcm", url_name="seg")
    def seg(self, request: Request, pk: str | None = None):
        """The structures as a DICOM Segmentation (SEG) referencing the same series as the RTSTRUCT."""
        return self._optional_download("seg.dcm", "DICOM SEG", "application/dicom")

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

    def _optional_download(self, filename: str, what: str, content_type: str):
        job, problem = self._result_file(filename)
        if problem:
            return problem
        path = job.result_path / filename
        if not path.exists() and filename not in job.checksums:  # a recorded output gone missing is damage
            why = " ".join(job.notes) if job.notes else ""
            if filename == "ct_dicom.zip" and job.input_kind == "dicom":
                why = "The scan was uploaded as DICOM: the RTSTRUCT and SEG reference the uploaded series."
            if filename == "audit.json" and not job.is_audit:
                why = "This job is a delineation, not a contour audit."
            elif job.is_audit:
                why = "A contour audit writes the audit and the model's label map, not the delineation's DICOM files."
            return _detail(f"No {what} was written for this job. {why}".strip(), 404)
        return self._download(job, filename, content_type)

    @extend_schema(
        responses={
            (200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY, description="structures/<name>.nii.gz"),
            404: _DETAIL,
            409: _DETAIL,
        }
    )
    @action(detail=True, methods=["get"], url_path="structures.zip", url_name="structures-zip")
    def structures_zip(self, request: Request, pk: str | None = None):
        """One NIfTI mask per structure (uint8 0/1, input grid) plus structures.json, zipped."""
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
        return self._download(job, "structures.zip", "application/zip")

    @extend_schema(
        parameters=[
            OpenApiParameter("plane", str, enum=[*services.PLANES], default="axial"),
            OpenApiParameter("index", int, description="Slice index; default: through the structures' centre."),
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
        try:
            return Response(services.slice_of(job.result_path, plane, index))
        except ValueError as exc:
            return _detail(str(exc), 400)


class AccessEventList(generics.ListAPIView):
    """The access audit log, newest first (at most 1000 events): the requesting user's own
    actions and every action on their scans and jobs; staff see everyone's."""

    serializer_class = AccessEventSerializer
    LIMIT = 1000

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return AccessEvent.objects.none()
        events = AccessEvent.objects.all()
        user = self.request.user
        if not user.is_staff:
            events = events.filter(Q(user=user) | Q(object_owner=user))
        return events[: self.LIMIT]


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
