"""``/api/jobs/``: queue, list and show jobs; send a result; a propagation's choices; the
viewer's slices; correct, list and approve revisions. The files of a job:
``job_files``."""

from __future__ import annotations

from django.db import transaction
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from webapp.delineation import (
    access_log,
    exports,
    outputs,
    revisions,
    sharing,
    tasks,
    viewer,
)
from webapp.delineation.api.common import DETAIL, REVISION, JobLookup, detail
from webapp.delineation.api.job_files import JobFiles
from webapp.delineation.job_serializers import (
    ChoicesSerializer,
    JobSerializer,
    ResultSendSerializer,
    SendRequestSerializer,
)
from webapp.delineation.models import AccessEvent, Job
from webapp.delineation.serializers import (
    ApproveSerializer,
    JobCreateSerializer,
    RevisionSerializer,
    propagation_fields,
)


class JobViewSet(
    JobFiles,
    JobLookup,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Delineation jobs (on your scans and those shared with your teams): create one on a
    scan of yours, poll its status, download its results."""

    serializer_class = JobSerializer
    parser_classes = [JSONParser, FormParser, MultiPartParser]

    @extend_schema(
        request=JobCreateSerializer,
        responses={
            201: JobSerializer,
            200: OpenApiResponse(
                JobSerializer,
                description="The same job (scan, model, series, kind, planning scan and contours) was already "
                "queued or running: that job, and nothing new is queued.",
            ),
            400: OpenApiTypes.OBJECT,
            403: DETAIL,
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
            access_log.record(request, AccessEvent.Action.QUEUE, job)
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
            400: DETAIL,
            403: DETAIL,
            409: DETAIL,
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
            return detail(exc.message, exc.status)
        if created:
            if job.outside_domain:
                access_log.record(request, AccessEvent.Action.ACKNOWLEDGE, job, filename=record.filename)
            access_log.record(request, AccessEvent.Action.SEND, job, filename=record.filename)
        record.refresh_from_db()
        code = status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK
        return Response(ResultSendSerializer(record).data, status=code)

    def _finished(self) -> tuple[Job, Response | None]:
        job = self.get_object()
        if job.status == Job.Status.FAILED:
            return job, detail(f"The job failed, so it has no results: {job.error}", 409)
        if job.status != Job.Status.SUCCEEDED or job.result_path is None:
            return job, detail(f"The job has not finished yet (status: {job.status}); try again later.", 409)
        return job, None

    @extend_schema(
        request=ChoicesSerializer, responses={200: JobSerializer, 400: OpenApiTypes.OBJECT, 403: DETAIL, 409: DETAIL}
    )
    @action(detail=True, methods=["post"], url_path="choices", url_name="choices")
    def choices(self, request: Request, pk: str | None = None) -> Response:
        """Contour propagation jobs only: keep, per structure, the propagated contours or the model's
        direct segmentation of the daily scan. Saved on the job; the worker then writes the RTSTRUCT
        for the daily scan (``final_rtstruct.dcm``) from them, its progress in the job's ``exports``.
        Only the scan's owner chooses (a team member it is shared with gets 403)."""
        job, problem = self._finished()
        if not job.is_propagation:
            return detail("Only a contour propagation has contours to choose between.", 404)
        try:
            sharing.check_owner(job.scan, request.user, "choose the contours kept for")
        except sharing.SharingRefused as exc:
            return detail(exc.message, exc.status)
        if problem:
            return problem
        data = ChoicesSerializer(data=request.data, context={"job": job})
        data.is_valid(raise_exception=True)
        with transaction.atomic():
            job = Job.objects.select_for_update().get(pk=job.pk)  # after a build under way: it holds the lock
            job.choices = {**job.choices, **data.validated_data["choices"]}
            job.checksums = exports.without_final(job.checksums)
            job.save(update_fields=["choices", "checksums"])
            exports.request(job, outputs.FINAL_RTSTRUCT)
        job = self.get_queryset().get(pk=job.pk)
        return Response(JobSerializer(job, context={"request": request}).data)

    @extend_schema(
        parameters=[
            OpenApiParameter("plane", str, enum=[*viewer.PLANES], default="axial"),
            OpenApiParameter("index", int, description="Slice index; default: through the structures' centre."),
            REVISION,
        ],
        responses={200: OpenApiTypes.OBJECT, 400: DETAIL, 409: DETAIL},
    )
    @action(detail=True, methods=["get"], url_path="slice", url_name="slice")
    def slice_view(self, request: Request, pk: str | None = None) -> Response:
        """One slice of the CT (int16 HU) and label map (uint8), base64, little-endian,
        rows x columns in display orientation (radiological; see ``orientation``),
        with the pixel spacing (row, column) in mm for the aspect ratio."""
        job, problem = self._finished()
        if problem:
            return problem
        plane = request.query_params.get("plane", "axial")
        raw_index = request.query_params.get("index")
        try:
            index = int(raw_index) if raw_index not in (None, "") else None
        except ValueError:
            return detail("index must be an integer", 400)
        try:
            revision = revisions.find(job, request.query_params.get("revision"))
        except revisions.EditError as exc:
            return detail(exc.message, 400)
        labels = None if revision.number == 0 else revisions.labels_of(job, revision)
        try:
            body = viewer.slice_of(job.result_path, plane, index, labels)
        except ValueError as exc:
            return detail(str(exc), 400)
        return Response({**body, "revision": revision.number})

    def _edited_job(self, request: Request, what: str) -> tuple[Job, Response | None]:
        """The job, and a refusal: 403 for a team member (owners edit and approve), 400 for a job
        without contours to edit."""
        job = self.get_object()
        try:
            sharing.check_owner(job.scan, request.user, what)
            revisions.check_editable(job)
        except sharing.SharingRefused as exc:
            return job, detail(exc.message, exc.status)
        except revisions.EditError as exc:
            return job, detail(exc.message, 400)
        return job, None

    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses={201: RevisionSerializer, 400: DETAIL, 403: DETAIL},
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
            return detail(exc.message, 400)
        access_log.record(request, AccessEvent.Action.EDIT, job, filename=revision.labels_file)
        return Response(RevisionSerializer(revision).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: RevisionSerializer(many=True), 409: DETAIL})
    @action(detail=True, methods=["get"], url_path="revisions", url_name="revisions")
    def revision_list(self, request: Request, pk: str | None = None) -> Response:
        """The revisions of the job's label map, oldest first: 0 is the model's output."""
        job, problem = self._finished()
        if problem:
            return problem
        revisions.original(job)
        return Response(RevisionSerializer(job.revisions.select_related("parent"), many=True).data)

    @extend_schema(request=ApproveSerializer, responses={200: RevisionSerializer, 400: DETAIL, 403: DETAIL})
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
        access_log.record(request, AccessEvent.Action.APPROVE, job, filename=revision.labels_file)
        return Response(RevisionSerializer(revision).data)
