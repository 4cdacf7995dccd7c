"""Downloads: label map, structure masks (zip) and RTSTRUCT (DICOM input only)."""

from __future__ import annotations

import io
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests import factories
from webapp.delineation.models import Job

pytestmark = pytest.mark.django_db


def body(response) -> bytes:
    return b"".join(response.streaming_content)


def test_labels(alice_api, alice_job):
    response = alice_api.get(alice_job["downloads"]["labels"])
    assert response.status_code == 200
    assert response["Content-Type"] == "application/gzip"
    assert 'filename="series.zip_labels.nii.gz"' in response["Content-Disposition"]
    assert body(response)[:2] == b"\x1f\x8b"


def test_structures_zip(alice_api, alice_job):
    response = alice_api.get(f"/api/jobs/{alice_job['id']}/structures.zip")
    assert response.status_code == 200
    names = zipfile.ZipFile(io.BytesIO(body(response))).namelist()
    assert sorted(names) == ["structures.json", "structures/Brainstem.nii.gz", "structures/Mandible.nii.gz"]


def test_rtstruct_for_dicom_input(alice_api, alice_job):
    response = alice_api.get(alice_job["downloads"]["rtstruct"])
    assert response.status_code == 200
    assert response["Content-Type"] == "application/dicom"
    assert body(response)[128:132] == b"DICM"


def test_no_rtstruct_for_nifti_input(alice_api, fake_engine, django_capture_on_commit_callbacks):
    scan = alice_api.post(
        "/api/scans/", {"file": SimpleUploadedFile("ct.nii.gz", factories.nifti_bytes())}, format="multipart"
    ).json()
    with django_capture_on_commit_callbacks(execute=True):
        job = alice_api.post("/api/jobs/", {"scan": scan["id"], "model": "hn-oar"}, format="json").json()
    job = alice_api.get(f"/api/jobs/{job['id']}/").json()
    assert job["status"] == "succeeded" and job["downloads"]["rtstruct"] is None
    response = alice_api.get(f"/api/jobs/{job['id']}/rtstruct.dcm")
    assert response.status_code == 404
    assert "NIfTI" in response.json()["detail"]
    assert alice_api.get(job["downloads"]["labels"]).status_code == 200


@pytest.mark.parametrize("status,word", [("queued", "not finished"), ("running", "not finished"), ("failed", "failed")])
def test_no_downloads_before_success(alice_api, alice_job, status, word):
    Job.objects.filter(pk=alice_job["id"]).update(status=status, error="boom")
    for name in ("labels.nii.gz", "rtstruct.dcm", "structures.zip"):
        response = alice_api.get(f"/api/jobs/{alice_job['id']}/{name}")
        assert response.status_code == 409
        assert word in response.json()["detail"]
