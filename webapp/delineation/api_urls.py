from django.urls import path
from rest_framework.authtoken.views import obtain_auth_token
from rest_framework.routers import SimpleRouter

from webapp.delineation import api

router = SimpleRouter()
router.trailing_slash = "/?"  # optional slash: /api/jobs/<id>/labels.nii.gz works as written
router.register("scans", api.ScanViewSet, basename="api-scan")
router.register("jobs", api.JobViewSet, basename="api-job")
router.register("patients", api.PatientViewSet, basename="api-patient")

urlpatterns = [
    path("models/", api.ModelsView.as_view(), name="api-models"),
    path("propagation-models/", api.PropagationModelsView.as_view(), name="api-propagation-models"),
    path("audit-log/", api.AccessEventList.as_view(), name="api-audit-log"),
    path("teams/", api.TeamList.as_view(), name="api-team-list"),
    path("auth/token/", obtain_auth_token, name="api-token"),
    *router.urls,
]
