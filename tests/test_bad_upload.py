"""Uploads that cannot be delineated are refused with a message a physician understands,
and nothing of them is kept."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests import factories
from webapp.delineation.models import Scan

pytestmark = pytest.mark.django_db


def post(client, **data):
    return client.post("/api/scans/", data, format="multipart")


def assert_refused(response, *words, status=400):
    assert response.status_code == status, response.content
    detail = response.json()["detail"]
    for word in words:
        assert word.lower() in detail.lower(), detail
    assert Scan.objects.count() == 0


def nothing_on_disk(media_root):
    scans = media_root / "scans"
    return not scans.exists() or not any(scans.iterdir())


def test_no_file(alice_api, media_root):
    assert_refused(post(alice_api, name="x"), "no file")
    assert nothing_on_disk(media_root)


def test_wrong_field_name(alice_api):
    assert_refused(post(alice_api, upload=SimpleUploadedFile("a.zip", b"x")), "unexpected file field")


def test_unsupported_file_type(alice_api, media_root):
    assert_refused(post(alice_api, file=SimpleUploadedFile("report.pdf", b"%PDF-1.4")), "not a supported file")
    assert nothing_on_disk(media_root)


def test_damaged_zip(alice_api, dicom_zip, media_root):
    assert_refused(post(alice_api, file=SimpleUploadedFile("ct.zip", dicom_zip[: len(dicom_zip) // 2])), "zip")
    assert nothing_on_disk(media_root)


def test_not_a_zip(alice_api):
    assert_refused(post(alice_api, file=SimpleUploadedFile("ct.zip", b"hello")), "not a valid zip")


def test_zip_without_dicom(alice_api, media_root):
    data = factories.zip_bytes({"readme.txt": b"hello", "notes/a.txt": b"x"})
    response = post(alice_api, file=SimpleUploadedFile("ct.zip", data))
    assert response.status_code == 400
    assert "not accepted" in response.json()["detail"]
    assert Scan.objects.count() == 0
    assert nothing_on_disk(media_root)


def test_empty_zip(alice_api):
    assert_refused(post(alice_api, file=SimpleUploadedFile("ct.zip", factories.zip_bytes({}))), "empty")


def test_single_dicom_slice(alice_api, tmp_path):
    (path,) = factories.dicom_series(tmp_path / "s", slices=1)
    assert_refused(
        post(alice_api, file=SimpleUploadedFile("IM0001.dcm", path.read_bytes())), "single DICOM file", "one per slice"
    )


def test_broken_nifti(alice_api):
    assert_refused(post(alice_api, file=SimpleUploadedFile("ct.nii.gz", b"not gzip")), "gzip")
    assert_refused(post(alice_api, file=SimpleUploadedFile("ct.nii", b"\0" * 400)), "not a readable nifti")


def test_folder_without_dicom(alice_api):
    files = [SimpleUploadedFile("a.txt", b"a"), SimpleUploadedFile("b.txt", b"b")]
    assert_refused(post(alice_api, files=files), "none of the 2 files is a dicom file")


def test_file_and_files_together(alice_api, tmp_path, nifti_upload):
    (path,) = factories.dicom_series(tmp_path / "s", slices=1)
    response = post(alice_api, file=nifti_upload, files=[SimpleUploadedFile("a.dcm", path.read_bytes())])
    assert_refused(response, "not both")


def test_too_large(alice_api, settings, media_root):
    settings.DELINEO_MAX_UPLOAD_BYTES = 1000
    response = post(alice_api, file=SimpleUploadedFile("ct.nii.gz", factories.nifti_bytes(shape=(32, 32, 32))))
    assert_refused(response, "limit", status=413)
    assert nothing_on_disk(media_root)


def test_too_many_files(alice_api, settings, tmp_path):
    settings.DELINEO_MAX_UPLOAD_FILES = 2
    paths = factories.dicom_series(tmp_path / "s", slices=3)
    files = [SimpleUploadedFile(p.name, p.read_bytes()) for p in paths]
    assert_refused(post(alice_api, files=files), "limit", status=413)
