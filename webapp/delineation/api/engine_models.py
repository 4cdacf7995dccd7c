"""``/api/models/`` and ``/api/propagation-models/``: what this server can run (from the
model cards; no model is loaded)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from webapp.delineation import engine_client


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
        return Response(engine_client.model_cards())


class PropagationModelsView(APIView):
    """The contour propagation methods of this server: classical registrations and joint
    registration-segmentation models (``engine.infer.propagate.PROPAGATION_MODELS``)."""

    @extend_schema(responses=inline_serializer("PropagationModels", {"models": serializers.ListField()}))
    def get(self, request: Request) -> Response:
        return Response({"models": engine_client.propagation_models()})
