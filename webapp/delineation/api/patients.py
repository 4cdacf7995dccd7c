"""``/api/patients/``: your patients, each with its scans."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import mixins, serializers, viewsets
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from webapp.delineation import access_log
from webapp.delineation.models import AccessEvent, Patient
from webapp.delineation.serializers import PatientSerializer


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
        access_log.record(request, AccessEvent.Action.VIEW, patient)
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
