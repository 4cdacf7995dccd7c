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


def test_rtstruct_check_and_seg_are_shown_with_the_downloads(alice_api, alice_job):
    check = alice_job["rtstruct_check"]
    assert check["threshold"] == 0.98 and check["min_dice"] == pytest.approx(0.995)
    assert set(check["dice"]) == {"Brainstem", "Mandible"}
    response = alice_api.get(alice_job["downloads"]["seg"])
    assert response.status_code == 200 and body(response).endswith(b"DICM fake seg")
    assert alice_job["downloads"]["ct_dicom"] is None
    response = alice_api.get(f"/api/jobs/{alice_job['id']}/ct_dicom.zip")
    assert response.status_code == 404 and "uploaded as DICOM" in response.json()["detail"]


def test_nifti_input_gets_its_ct_as_dicom_with_rtstruct_and_seg(
    alice_api, fake_engine, django_capture_on_commit_callbacks
):
    scan = alice_api.post(
        "/api/scans/", {"file": SimpleUploadedFile("ct.nii.gz", factories.nifti_bytes())}, format="multipart"
    ).json()
    with django_capture_on_commit_callbacks(execute=True):
        job = alice_api.post("/api/jobs/", {"scan": scan["id"], "model": "hn-oar"}, format="json").json()
    job = alice_api.get(f"/api/jobs/{job['id']}/").json()
    assert job["status"] == "succeeded"
    for key in ("rtstruct", "seg", "ct_dicom", "labels"):
        assert alice_api.get(job["downloads"][key]).status_code == 200, key


def test_a_missing_output_says_why(alice_api, alice_job):
    job = Job.objects.get(pk=alice_job["id"])
    (job.result_path / "seg.dcm").unlink()  # as if the engine had not written it
    checksums = {name: digest for name, digest in job.checksums.items() if name != "seg.dcm"}
    Job.objects.filter(pk=job.pk).update(
        notes=["no DICOM SEG: the series has no Series Instance UID"], checksums=checksums
    )
    job = alice_api.get(f"/api/jobs/{alice_job['id']}/").json()
    assert job["downloads"]["seg"] is None and job["notes"]
    response = alice_api.get(f"/api/jobs/{alice_job['id']}/seg.dcm")
    assert response.status_code == 404 and "no Series Instance UID" in response.json()["detail"]


@pytest.mark.parametrize("status,word", [("queued", "not finished"), ("running", "not finished"), ("failed", "failed")])
def test_no_downloads_before_success(alice_api, alice_job, status, word):
    Job.objects.filter(pk=alice_job["id"]).update(status=status, error="boom")
    for name in ("labels.nii.gz", "rtstruct.dcm", "structures.zip", "seg.dcm", "ct_dicom.zip"):
        response = alice_api.get(f"/api/jobs/{alice_job['id']}/{name}")
        assert response.status_code == 409
        assert word in response.json()["detail"]
