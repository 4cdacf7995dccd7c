from django.urls import path

from webapp.delineation import views

urlpatterns = [
    path("", views.home, name="home"),
    path("upload/", views.upload, name="upload"),
    path("scans/<uuid:scan_id>/", views.scan_detail, name="scan-detail"),
    path("scans/<uuid:scan_id>/share/", views.scan_share, name="scan-share"),
    path("scans/<uuid:scan_id>/unshare/", views.scan_unshare, name="scan-unshare"),
    path("patients/", views.patient_list, name="patient-list"),
    path("patients/<uuid:patient_id>/", views.patient_detail, name="patient-detail"),
    path("jobs/", views.job_list, name="job-list"),
    path("jobs/<uuid:job_id>/", views.viewer, name="job-viewer"),
    path("jobs/<uuid:job_id>/send/", views.job_send, name="job-send"),
]
