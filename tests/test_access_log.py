"""The access log: every upload, view, download, delete and queued job is recorded,
with ids only (never a scan's name, which can hold a patient's), and each user reads only
the events on the data they own."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.forms.models import model_to_dict

from tests import factories
from webapp.delineation.models import AccessEvent, Job, Scan

pytestmark = pytest.mark.django_db

PATIENT = "Doe^John"


def _no_patient_name() -> None:
    for event in AccessEvent.objects.all():
        for field, value in model_to_dict(event).items():
            assert "doe" not in str(value).lower(), (field, value)


@pytest.fixture
def named_job(alice_api, dicom_zip, fake_engine, django_capture_on_commit_callbacks):
    """A succeeded job of Alice on a scan uploaded as ``Doe^John.zip`` and named ``Doe^John``."""
    upload = SimpleUploadedFile(f"{PATIENT}.zip", dicom_zip, content_type="application/zip")
    response = alice_api.post("/api/scans/", {"file": upload, "name": PATIENT}, format="multipart")
    assert response.status_code == 201, response.content
    scan_id = response.json()["id"]
    assert PATIENT in Scan.objects.get(pk=scan_id).name
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_api.post("/api/jobs/", {"scan": scan_id, "model": "hn-oar"}, format="json")
    assert response.status_code == 201, response.content
    return Job.objects.get(pk=response.json()["id"])


def _events(action: str) -> list[AccessEvent]:
    return list(AccessEvent.objects.filter(action=action))


def test_upload_and_queue_recorded(alice, named_job):
    (upload,) = _events("upload")
    assert (upload.user, upload.username, upload.object_type, upload.object_id) == (
        alice,
        "alice",
        "scan",
        named_job.scan_id,
    )
    assert upload.client_ip == "127.0.0.1" and upload.created is not None
    (queue,) = _events("queue")
    assert (queue.object_type, queue.object_id, queue.object_owner) == ("job", named_job.id, alice)
    _no_patient_name()


@pytest.mark.parametrize("filename", ["labels.nii.gz", "rtstruct.dcm", "seg.dcm", "structures.zip"])
def test_each_download_recorded_with_the_stored_file_name(alice_api, named_job, filename):
    response = alice_api.get(f"/api/jobs/{named_job.id}/{filename}")
    assert response.status_code == 200
    assert PATIENT.replace("^", "_") in response["Content-Disposition"]  # served under the scan's name...
    (download,) = _events("download")
    assert (download.object_id, download.filename) == (named_job.id, filename)  # ...recorded without it
    _no_patient_name()


def test_refused_download_not_recorded(alice_api, named_job):
    Job.objects.filter(pk=named_job.id).update(status="running")
    assert alice_api.get(f"/api/jobs/{named_job.id}/labels.nii.gz").status_code == 409
    assert not _events("download")


def test_pages_record_views_upload_and_queue(client, alice, named_job, fake_engine, django_capture_on_commit_callbacks):
    client.force_login(alice)
    assert client.get(f"/jobs/{named_job.id}/").status_code == 200
    assert client.get(f"/scans/{named_job.scan_id}/").status_code == 200
    assert {(e.object_type, e.object_id) for e in _events("view")} == {
        ("job", named_job.id),
        ("scan", named_job.scan_id),
    }
    upload = SimpleUploadedFile(f"{PATIENT}.nii.gz", factories.nifti_bytes(), content_type="application/gzip")
    response = client.post("/upload/", {"file": upload, "name": PATIENT})
    assert response.status_code == 302
    scan = Scan.objects.exclude(pk=named_job.scan_id).get()
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(f"/scans/{scan.id}/", {"model": "hn-oar"}).status_code == 302
    assert scan.id in {e.object_id for e in _events("upload")}
    assert len(_events("queue")) == 2
    _no_patient_name()


def test_delete_recorded_and_kept_after_the_scan(alice_api, named_job, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        assert alice_api.delete(f"/api/scans/{named_job.scan_id}/").status_code == 204
    assert not Scan.objects.exists()
    (delete,) = _events("delete")
    assert (delete.object_type, delete.object_id) == ("scan", named_job.scan_id)
    assert AccessEvent.objects.count() == 3  # upload, queue, delete: none removed with the scan
    _no_patient_name()


def test_event_kept_with_username_when_the_user_is_deleted(alice, named_job):
    alice.delete()
    assert AccessEvent.objects.count() == 2
    assert set(AccessEvent.objects.values_list("user", "username")) == {(None, "alice")}


def test_owner_reads_own_events_other_user_only_theirs(alice_api, bob_api, bob, named_job, dicom_zip):
    response = alice_api.get("/api/access-log/")
    assert response.status_code == 200
    events = response.json()
    assert {e["action"] for e in events} == {"upload", "queue"}
    assert all(e["username"] == "alice" for e in events)
    assert PATIENT not in response.content.decode()
    assert bob_api.get("/api/access-log/").json() == []
    upload = SimpleUploadedFile("series.zip", dicom_zip, content_type="application/zip")
    assert bob_api.post("/api/scans/", {"file": upload}, format="multipart").status_code == 201
    bob_events = bob_api.get("/api/access-log/").json()
    assert [(e["username"], e["action"]) for e in bob_events] == [("bob", "upload")]
    assert len(alice_api.get("/api/access-log/").json()) == 2


def test_staff_read_everyones_events(alice_api, bob, bob_api, named_job):
    bob.is_staff = True
    bob.save()
    assert {e["username"] for e in bob_api.get("/api/access-log/").json()} == {"alice"}


def test_audit_log_needs_login(anon_api):
    assert anon_api.get("/api/access-log/").status_code == 401


def test_admin_is_read_only(client, django_user_model, named_job):
    admin = django_user_model.objects.create_superuser("admin", password="admin-password-123")
    client.force_login(admin)
    event = AccessEvent.objects.first()
    assert client.get("/admin/delineation/accessevent/").status_code == 200
    assert client.get(f"/admin/delineation/accessevent/{event.pk}/change/").status_code == 200
    assert client.get("/admin/delineation/accessevent/add/").status_code == 403
    assert client.post(f"/admin/delineation/accessevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AccessEvent.objects.filter(pk=event.pk).exists()


def test_other_users_object_not_logged(bob_api, named_job):
    assert bob_api.get(f"/api/jobs/{named_job.id}/labels.nii.gz").status_code == 404
    assert not _events("download")
