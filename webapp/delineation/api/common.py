"""What the API's modules share: refusals, the documented detail body, the revision
parameter, and the job look-up."""

from __future__ import annotations

import uuid

from drf_spectacular.utils import OpenApiParameter, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response

from webapp.delineation.models import Job

DETAIL = inline_serializer("Detail", {"detail": serializers.CharField()})
REVISION = OpenApiParameter(
    "revision", int, description="A revision of the label map (0: the model's output); default: the latest."
)


def detail(message: str, code: int) -> Response:
    return Response({"detail": message}, status=code)


class JobLookup:
    """The jobs a request may see (``Job.objects.visible_to``); ``?scan=`` filters a list."""

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Job.objects.none()
        queryset = (
            Job.objects.visible_to(self.request.user)
            .select_related("scan", "scan__owner", "planning_scan")
            .prefetch_related("sends", "revisions", "exports")
        )
        scan = self.request.query_params.get("scan")
        if scan and self.action == "list":
            try:
                queryset = queryset.filter(scan_id=uuid.UUID(scan))
            except ValueError:
                queryset = queryset.none()
        return queryset
