"""URLs: pages at /, the REST API at /api/ (schema at /api/schema/), accounts, admin."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from webapp.delineation.throttling import ThrottledLoginView

urlpatterns = [
    path("accounts/login/", ThrottledLoginView.as_view(), name="login"),  # before auth.urls' own
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/", include("webapp.delineation.api_urls")),
    path("", include("webapp.delineation.urls")),
]
