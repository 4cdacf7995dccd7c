"""Every stored output of a succeeded job has its SHA-256 recorded; a download checks it and
refuses a damaged file with a message; outputs the web process writes are renamed into place."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zipfile

import numpy as np
import pytest

from webapp.delineation import outputs, viewer
from webapp.delineation.models import Job

pytestmark = pytest.mark.django_db

DOWNLOADS = ("labels.nii.gz", "rtstruct.dcm", "seg.dcm", "structures.zip")


def body(response) -> bytes:
    return b"".join(response.streaming_content)


def stored_files(result_dir) -> dict[str, bytes]:
    return {
        path.relative_to(result_dir).as_posix(): path.read_bytes() for path in result_dir.rglob("*") if path.is_file()
    }


def test_the_checksums_of_a_succeeded_job_match_every_stored_file(alice_job):
    job = Job.objects.get(pk=alice_job["id"])
    files = stored_files(job.result_path)
    assert set(job.checksums) == set(files)
    assert {*DOWNLOADS, "image.nii.gz", "structures.json", "structures/Brainstem.nii.gz", "viewer/image.npy"} <= set(
        files
    )
    for name, content in files.items():
        assert job.checksums[name] == hashlib.sha256(content).hexdigest(), name
    assert not [name for name in files if os.path.basename(name).startswith(".")]  # no temporary file left


@pytest.mark.parametrize("name", DOWNLOADS)
def test_an_intact_output_is_served_whole(alice_api, alice_job, name):
    job = Job.objects.get(pk=alice_job["id"])
    response = alice_api.get(f"/api/jobs/{job.id}/{name}")
    assert response.status_code == 200
    assert body(response) == (job.result_path / name).read_bytes()


@pytest.mark.parametrize("name", DOWNLOADS)
def test_a_tampered_output_is_refused_with_a_message(alice_api, alice_job, name, caplog):
    job = Job.objects.get(pk=alice_job["id"])
    with open(job.result_path / name, "ab") as f:
        f.write(b"\0")
    with caplog.at_level(logging.ERROR, logger="webapp.delineation.api"):
        response = alice_api.get(f"/api/jobs/{job.id}/{name}")
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert "damaged" in detail and "Run the job again" in detail and name in detail
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert str(job.id) in logged and job.scan.name not in logged  # the job id, never the upload's name


def test_a_recorded_output_that_went_missing_is_refused(alice_api, alice_job):
    job = Job.objects.get(pk=alice_job["id"])
    (job.result_path / "rtstruct.dcm").unlink()
    response = alice_api.get(f"/api/jobs/{job.id}/rtstruct.dcm")
    assert response.status_code == 409 and "damaged" in response.json()["detail"]
    (job.result_path / "structures.zip").unlink()  # not rebuilt behind the checksum's back
    response = alice_api.get(f"/api/jobs/{job.id}/structures.zip")
    assert response.status_code == 409 and "damaged" in response.json()["detail"]


def test_a_file_not_written_by_the_job_is_not_served(alice_api, alice_job):
    job = Job.objects.get(pk=alice_job["id"])
    (job.result_path / "ct_dicom.zip").write_bytes(b"PK not from this job")
    response = alice_api.get(f"/api/jobs/{job.id}/ct_dicom.zip")
    assert response.status_code == 409 and "damaged" in response.json()["detail"]


def test_a_job_finished_before_checksums_is_served_unchecked(alice_api, alice_job):
    job = Job.objects.get(pk=alice_job["id"])
    (job.result_path / "structures.zip").unlink()
    Job.objects.filter(pk=job.pk).update(checksums={})
    response = alice_api.get(f"/api/jobs/{job.id}/labels.nii.gz")
    assert response.status_code == 200
    response = alice_api.get(f"/api/jobs/{job.id}/structures.zip")  # built on first download, as before
    assert response.status_code == 200
    assert "structures.json" in zipfile.ZipFile(io.BytesIO(body(response))).namelist()


def test_the_file_served_is_the_one_checked(alice_job, tmp_path):
    job = Job.objects.get(pk=alice_job["id"])
    handle = outputs.open_verified(job.result_path, "labels.nii.gz", job.checksums)
    original = (job.result_path / "labels.nii.gz").read_bytes()
    replacement = tmp_path / "other"
    replacement.write_bytes(b"renamed over it after the check")
    os.replace(replacement, job.result_path / "labels.nii.gz")
    with handle:
        assert handle.read() == original


def test_the_masks_zip_is_the_same_when_built_twice(alice_job, tmp_path):
    job = Job.objects.get(pk=alice_job["id"])
    outputs.structures_zip(job.result_path, tmp_path / "again.zip")
    assert (tmp_path / "again.zip").read_bytes() == (job.result_path / "structures.zip").read_bytes()


def test_a_failing_zip_write_keeps_the_old_zip_and_leaves_no_temporary(alice_job, monkeypatch):
    job = Job.objects.get(pk=alice_job["id"])
    target = job.result_path / "structures.zip"
    old = target.read_bytes()
    before = sorted(os.listdir(job.result_path))

    def copy_then_fail(src, dst, length=0):
        dst.write(src.read(10))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs.shutil, "copyfileobj", copy_then_fail)
    with pytest.raises(OSError, match="No space"):
        outputs.structures_zip(job.result_path, target)
    assert sorted(os.listdir(job.result_path)) == before
    assert target.read_bytes() == old


def test_a_failing_viewer_write_keeps_the_old_array_and_leaves_no_temporary(alice_job, monkeypatch):
    job = Job.objects.get(pk=alice_job["id"])
    folder = job.result_path / "viewer"
    old = (folder / "labels.npy").read_bytes()
    before = sorted(os.listdir(folder))

    def save_then_fail(file, array, **kwargs):
        file.write(b"\x93NUMPY partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(viewer.np, "save", save_then_fail)
    with pytest.raises(OSError, match="No space"):
        viewer._atomic_save_npy(folder / "labels.npy", np.zeros(3, np.uint8))
    assert sorted(os.listdir(folder)) == before
    assert (folder / "labels.npy").read_bytes() == old
