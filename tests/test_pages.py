"""The pages render for a logged-in user; the upload form also works without JavaScript."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests import factories
from webapp.delineation.models import Job

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice_browser(client, alice):
    client.force_login(alice)
    return client


def test_upload_page(alice_browser, fake_engine):
    response = alice_browser.get("/upload/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "webkitdirectory" in html and 'name="file"' in html
    assert '<option value="hn-oar"' in html
    assert "/static/js/upload.js" in html


def test_upload_page_without_models_says_so(alice_browser, monkeypatch):
    from webapp.delineation import services

    monkeypatch.setattr(services, "available_models", lambda: [])
    assert "No delineation model is installed" in alice_browser.get("/upload/").content.decode()


def test_job_list_page(alice_browser, alice_job):
    response = alice_browser.get("/jobs/")
    assert response.status_code == 200
    assert alice_job["id"] in response.content.decode()


def test_viewer_page(alice_browser, alice_job):
    response = alice_browser.get(f"/jobs/{alice_job['id']}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "/static/vendor/plotly.min.js" in html and "cdn" not in html.lower()
    assert f"/api/jobs/{alice_job['id']}/slice" in html


def test_form_upload_without_javascript(alice_browser, alice, fake_engine, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_browser.post(
            "/upload/", {"file": SimpleUploadedFile("ct.nii.gz", factories.nifti_bytes()), "model": "hn-oar"}
        )
    assert response.status_code == 302 and response["Location"] == "/jobs/"
    job = Job.objects.get()
    assert job.owner == alice and job.status == "succeeded"


def test_form_upload_error_is_shown(alice_browser, fake_engine):
    response = alice_browser.post("/upload/", {"file": SimpleUploadedFile("a.txt", b"x"), "model": "hn-oar"})
    assert response.status_code == 200
    assert "not a supported file" in response.content.decode()
    assert Job.objects.count() == 0


def test_vendored_plotly_is_served(alice_browser):
    from django.contrib.staticfiles import finders

    path = finders.find("vendor/plotly.min.js")
    assert path and "plotly.js v" in open(path, encoding="utf-8").read(300)


def test_form_folder_upload_without_javascript(
    alice_browser, tmp_path, fake_engine, django_capture_on_commit_callbacks
):
    paths = factories.dicom_series(tmp_path / "s", slices=3)
    files = [SimpleUploadedFile(p.name, p.read_bytes()) for p in paths]
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_browser.post("/upload/", {"files": files, "model": "hn-oar"})
    assert response.status_code == 302, response.content.decode()[-2000:]
    job = Job.objects.get()
    assert job.scan.input_kind == "dicom_folder" and job.scan.file_count == 3
