"""The pages render for a logged-in user; the upload form also works without JavaScript."""

from __future__ import annotations

import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests import factories
from webapp.delineation.models import Job, Scan

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
    assert "/static/js/upload.js" in html


def test_upload_page_without_models_says_so(alice_browser, monkeypatch):
    from webapp.delineation import engine_client

    monkeypatch.setattr(engine_client, "available_models", lambda: [])
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
    response = alice_browser.post("/upload/", {"file": SimpleUploadedFile("ct.nii.gz", factories.nifti_bytes())})
    scan = Scan.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/scans/{scan.id}/"
    assert Job.objects.count() == 0, "nothing is queued before the physician has seen the report"
    page = alice_browser.get(response["Location"]).content.decode()
    assert "NIfTI volume" in page and '<option value="hn-oar"' in page
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_browser.post(f"/scans/{scan.id}/", {"model": "hn-oar"})
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/?new={job.id}"
    assert job.owner == alice and job.status == "succeeded"


def test_scan_page_shows_the_preflight_report_and_the_series_choice(
    alice_browser, tmp_path, fake_engine, django_capture_on_commit_callbacks
):
    first = factories.dicom_series(tmp_path / "up" / "a", slices=4)
    second = factories.dicom_series(tmp_path / "up" / "b", slices=5)
    archive = tmp_path / "two.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in [*first, *second]:
            zf.write(p, p.relative_to(tmp_path))
        zf.writestr("up/readme.txt", "notes")
    response = alice_browser.post("/upload/", {"file": SimpleUploadedFile("two.zip", archive.read_bytes())})
    scan = Scan.objects.get()
    page = alice_browser.get(response["Location"]).content.decode()
    keys = [s["key"] for s in scan.preflight["series"]]
    assert len(keys) == 2 and all(f'value="{k}"' in page for k in keys)
    assert "several image series: choose" in page and "readme.txt" in page
    response = alice_browser.post(f"/scans/{scan.id}/", {"model": "hn-oar"})
    assert response.status_code == 200 and "choose one" in response.content.decode()
    assert Job.objects.count() == 0
    chosen = next(s["key"] for s in scan.preflight["series"] if s["images"] == 4)
    with django_capture_on_commit_callbacks(execute=True):
        alice_browser.post(f"/scans/{scan.id}/", {"model": "hn-oar", "series": chosen})
    job = Job.objects.get()
    assert job.series_key == chosen and fake_engine[0]["series"] == chosen


def test_scan_page_of_another_user_is_404(client, bob, alice_scan):
    client.force_login(bob)
    assert client.get(f"/scans/{alice_scan['id']}/").status_code == 404
    assert client.post(f"/scans/{alice_scan['id']}/", {"model": "hn-oar"}).status_code == 404


def test_form_upload_error_is_shown(alice_browser, fake_engine):
    response = alice_browser.post("/upload/", {"file": SimpleUploadedFile("a.txt", b"x")})
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
    response = alice_browser.post("/upload/", {"files": files})
    assert response.status_code == 302, response.content.decode()[-2000:]
    scan = Scan.objects.get()
    assert scan.input_kind == "dicom_folder" and scan.file_count == 3
    (series,) = scan.preflight["series"]
    assert series["status"] == "ok" and scan.preflight["selected"] == series["key"]
    with django_capture_on_commit_callbacks(execute=True):
        alice_browser.post(f"/scans/{scan.id}/", {"model": "hn-oar"})
    assert Job.objects.get().series_key == series["key"]
