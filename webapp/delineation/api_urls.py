from django.http import JsonResponse
from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt
from rest_framework.routers import SimpleRouter

from webapp.delineation.api.access import AccessEventList, TeamList
from webapp.delineation.api.engine_models import ModelsView, PropagationModelsView
from webapp.delineation.api.jobs import JobViewSet
from webapp.delineation.api.patients import PatientViewSet
from webapp.delineation.api.scans import ScanViewSet
from webapp.delineation.throttling import ThrottledObtainAuthToken

router = SimpleRouter()
router.trailing_slash = "/?"  # optional slash: /api/jobs/<id>/labels.nii.gz works as written
router.register("scans", ScanViewSet, basename="api-scan")
router.register("jobs", JobViewSet, basename="api-job")
router.register("patients", PatientViewSet, basename="api-patient")

urlpatterns = [
    path("models/", ModelsView.as_view(), name="api-models"),
    path("propagation-models/", PropagationModelsView.as_view(), name="api-propagation-models"),
    path("access-log/", AccessEventList.as_view(), name="api-access-log"),
    path("teams/", TeamList.as_view(), name="api-team-list"),
    path("auth/token/", ThrottledObtainAuthToken.as_view(), name="api-token"),
    *router.urls,
]


@csrf_exempt  # it changes nothing; a DELETE to an unknown URL is still a 404, not a CSRF 403
def not_found(request, *args, **kwargs) -> JsonResponse:
    """Any other URL under /api/ (an id that is not a UUID, a misspelt path): a JSON 404, as
    every API answer is JSON, not Django's HTML page."""
    return JsonResponse({"detail": "Not found."}, status=404)


urlpatterns.append(re_path(r"^.*$", not_found, name="api-not-found"))
