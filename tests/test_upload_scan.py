"""POST /api/scans/: zip, NIfTI and folder uploads are stored unchanged; bad ones get 4xx with a message."""

from __future__ import annotations

import hashlib

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests import factories
from webapp.delineation.models import Scan

pytestmark = pytest.mark.django_db


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_zip_upload_is_stored_unchanged(alice_api, alice, dicom_zip, media_root):
    upload = SimpleUploadedFile("Head Neck.zip", dicom_zip, content_type="application/zip")
    response = alice_api.post("/api/scans/", {"file": upload}, format="multipart")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["input_kind"] == "dicom_zip"
    assert body["name"] == "Head Neck.zip"
    assert body["size_bytes"] == len(dicom_zip)
    scan = Scan.objects.get(pk=body["id"])
    assert scan.owner == alice
    stored = media_root / "scans" / body["id"] / "original" / "Head Neck.zip"
    assert stored.exists() and sha(stored.read_bytes()) == sha(dicom_zip)
    assert scan.engine_input == stored
    # The engine read the series at upload time.
    (series,) = body["preflight"]["series"]
    assert series["size"] == [16, 16, 8] and series["modality"] == "CT" and series["status"] == "ok"
    assert body["preflight"]["selected"] == series["key"]


def test_nifti_upload(alice_api, media_root):
    data = factories.nifti_bytes(shape=(10, 12, 6))
    response = alice_api.post(
        "/api/scans/", {"file": SimpleUploadedFile("pat.nii.gz", data), "name": "Patient 7"}, format="multipart"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["input_kind"] == "nifti" and body["name"] == "Patient 7"
    assert body["preflight"]["kind"] == "nifti" and body["preflight"]["series"][0]["size"] == [10, 12, 6]
    stored = media_root / "scans" / body["id"] / "original" / "pat.nii.gz"
    assert stored.read_bytes() == data


def test_uncompressed_nifti_upload(alice_api):
    response = alice_api.post(
        "/api/scans/", {"file": SimpleUploadedFile("ct.nii", factories.nifti_bytes(gz=False))}, format="multipart"
    )
    assert response.status_code == 201, response.content


def test_folder_upload_keeps_relative_paths(alice_api, tmp_path, media_root):
    paths = factories.dicom_series(tmp_path / "src")
    files = [SimpleUploadedFile(p.name, p.read_bytes()) for p in paths]
    extra = SimpleUploadedFile("DICOMDIR.txt", b"not dicom")
    relative = [f"pt_1/CT/{p.name}" for p in paths] + ["pt_1/notes.txt"]
    response = alice_api.post("/api/scans/", {"files": [*files, extra], "paths": relative}, format="multipart")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["input_kind"] == "dicom_folder"
    assert body["name"] == "pt_1"
    assert body["file_count"] == len(paths) + 1
    original = media_root / "scans" / body["id"] / "original"
    for p in paths:
        assert (original / "pt_1" / "CT" / p.name).read_bytes() == p.read_bytes()
    # Nothing dropped: the non-DICOM file is kept and reported.
    assert (original / "pt_1" / "notes.txt").read_bytes() == b"not dicom"
    assert body["preflight"]["upload"]["other_file_names"] == ["pt_1/notes.txt"]


def test_folder_upload_without_paths_uses_file_names(alice_api, tmp_path):
    paths = factories.dicom_series(tmp_path / "src")
    files = [SimpleUploadedFile(p.name, p.read_bytes()) for p in paths]
    response = alice_api.post("/api/scans/", {"files": files}, format="multipart")
    assert response.status_code == 201, response.content


def test_folder_upload_with_clashing_names_is_refused(alice_api, tmp_path):
    paths = factories.dicom_series(tmp_path / "src", slices=2)
    files = [SimpleUploadedFile("same.dcm", p.read_bytes()) for p in paths]
    response = alice_api.post("/api/scans/", {"files": files}, format="multipart")
    assert response.status_code == 400
    assert "same name" in response.json()["detail"]
    assert Scan.objects.count() == 0


@pytest.mark.parametrize("bad_path", ["../evil.dcm", "/etc/passwd", "a/../../b.dcm", ""])
def test_folder_upload_with_escaping_path_is_refused(alice_api, tmp_path, bad_path, media_root):
    (path,) = factories.dicom_series(tmp_path / "src", slices=1)
    response = alice_api.post(
        "/api/scans/",
        {"files": [SimpleUploadedFile("x.dcm", path.read_bytes())], "paths": [bad_path]},
        format="multipart",
    )
    assert response.status_code == 400
    assert "path" in response.json()["detail"]
    assert not any((media_root / "scans").glob("*/original/*")) if (media_root / "scans").exists() else True


def test_mismatched_paths_count_is_refused(alice_api, tmp_path):
    paths = factories.dicom_series(tmp_path / "src", slices=2)
    files = [SimpleUploadedFile(p.name, p.read_bytes()) for p in paths]
    response = alice_api.post("/api/scans/", {"files": files, "paths": ["a.dcm"]}, format="multipart")
    assert response.status_code == 400
    assert "relative paths" in response.json()["detail"]
