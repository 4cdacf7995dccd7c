"""``/api/scans/``: upload, list, show, set the patient of, share, unshare and delete scans."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from webapp.delineation import access_log, sharing
from webapp.delineation.api.common import DETAIL, detail
from webapp.delineation.models import AccessEvent, Job, Scan
from webapp.delineation.patients import patient_for
from webapp.delineation.serializers import (
    ScanPatientSerializer,
    ScanSerializer,
    ScanUploadSerializer,
    ShareSerializer,
)
from webapp.delineation.upload_limits import refusal_of
from webapp.delineation.uploads import UploadError, accept_upload


def _sharing_action(view):
    """``share`` and ``unshare``: a POST of ``{"team"}`` on one scan (JSON or a form) at the
    URL of the view's name, answered with the scan."""
    schema = extend_schema(request=ShareSerializer, responses={200: ScanSerializer, 400: DETAIL, 403: DETAIL})
    post = action(detail=True, methods=["post"], parser_classes=[JSONParser, FormParser, MultiPartParser])
    return schema(post(view))


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
        request=ScanPatientSerializer, responses={200: ScanSerializer, 400: OpenApiTypes.OBJECT, 403: DETAIL}
    )
    def partial_update(self, request: Request, *args, **kwargs) -> Response:
        """Set the scan's patient by Patient ID (entered for a NIfTI scan, or correcting the DICOM
        one); the patient is created among yours if new. An empty Patient ID ungroups the scan.
        Only the scan's owner does (a team member it is shared with gets 403)."""
        scan = self.get_object()
        try:
            sharing.check_owner(scan, request.user, "set the patient of")
        except sharing.SharingRefused as exc:
            return detail(exc.message, exc.status)
        data = ScanPatientSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        scan.patient = patient_for(
            request.user, data.validated_data["patient_id"], data.validated_data.get("patient_label", "")
        )
        scan.save(update_fields=["patient"])
        return Response(ScanSerializer(scan, context={"request": request}).data)

    @extend_schema(
        request={"multipart/form-data": ScanUploadSerializer},
        responses={201: ScanSerializer, 400: DETAIL, 413: DETAIL},
        description="Upload a scan: one field `file` (a .zip of one DICOM series, or a .nii/.nii.gz), "
        "or several fields `files` (the DICOM files of a folder) with their relative `paths` in the same order. "
        "With `deidentify=true` the DICOM files are de-identified (DICOM PS3.15 Annex E Basic Profile) before they "
        "are stored, and the files as sent are not kept.",
    )
    def create(self, request: Request, *args, **kwargs) -> Response:
        received = request.FILES  # reading the body applies the size and file-count limits while it streams
        refusal = refusal_of(request)
        if refusal is not None:
            return detail(refusal.message, refusal.status)
        unexpected = sorted(set(received) - {"file", "files"})
        if unexpected:
            return detail(
                f"Unexpected file field(s): {', '.join(unexpected)}. Use 'file' for a zip or NIfTI file, "
                "or 'files' for the files of a folder.",
                400,
            )
        singles = request.FILES.getlist("file")
        if len(singles) > 1:
            return detail("Send one file in 'file'; for the files of a folder use 'files'.", 400)
        try:
            deidentify = serializers.BooleanField().to_internal_value(
                request.data.get("deidentify", settings.DELINEO_DEIDENTIFY_DEFAULT)
            )
        except serializers.ValidationError:
            return detail("'deidentify' must be true or false.", 400)
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
            return detail(exc.message, exc.status)
        access_log.record(request, AccessEvent.Action.UPLOAD, scan)
        return Response(ScanSerializer(scan, context={"request": request}).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={204: None, 403: DETAIL, 409: DETAIL})
    def destroy(self, request: Request, *args, **kwargs) -> Response:
        """Delete a scan, its jobs and every file of it on disk. Its queued jobs go with it (their
        task finds no job and does nothing); a scan with a running job is refused (409). Only
        its owner deletes it (a team member it is shared with gets 403)."""
        scan = self.get_object()
        try:
            sharing.check_owner(scan, request.user, "delete")
        except sharing.SharingRefused as exc:
            return detail(exc.message, exc.status)
        with transaction.atomic():
            # Locked, so that no worker starts one of its queued jobs between the check and the delete.
            # A propagation reads its planning scan too.
            jobs = list(
                Job.objects.select_for_update()
                .filter(Q(scan=scan) | Q(planning_scan=scan))
                .values_list("status", flat=True)
            )
            if Job.Status.RUNNING in jobs:
                return detail("A job is still running on this scan; delete it when the job has finished.", 409)
            access_log.record(request, AccessEvent.Action.DELETE, scan)
            scan.delete()  # its folder goes too (signal in models.py)
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _sharing(self, request: Request, change) -> Response:
        scan = self.get_object()
        try:
            change(request, scan, request.data.get("team", ""))  # ShareSerializer, checked by ``sharing``
        except sharing.SharingRefused as exc:
            return detail(exc.message, exc.status)
        scan = self.get_queryset().get(pk=scan.pk)
        return Response(ScanSerializer(scan, context={"request": request}).data)

    @_sharing_action
    def share(self, request: Request, pk: str | None = None) -> Response:
        """Share the scan, its jobs and their files with one of your teams: its members may view
        and download them, not queue jobs, share or delete. Owner only; recorded as ``share``."""
        return self._sharing(request, sharing.share)

    @_sharing_action
    def unshare(self, request: Request, pk: str | None = None) -> Response:
        """Stop sharing the scan with a team: its members get 404 on it, its jobs and files
        again. Owner only; recorded as ``unshare``."""
        return self._sharing(request, sharing.unshare)
