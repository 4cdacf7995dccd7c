"""A folder upload whose relative paths cannot all be stored on a disk is refused with
400 and a message, not a server error: one path that is a file where another needs a
folder, and a file or folder name longer than 255 characters. Nothing of it is kept."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests import factories
from webapp.delineation.models import Scan

pytestmark = pytest.mark.django_db


@pytest.fixture
def slices(tmp_path) -> list[bytes]:
    return [p.read_bytes() for p in factories.dicom_series(tmp_path / "src", slices=3)]


def upload_folder(client, slices: list[bytes], paths: list[str]):
    files = [SimpleUploadedFile(f"f{i}.dcm", data) for i, data in enumerate(slices)]
    return client.post("/api/scans/", {"files": files, "paths": paths}, format="multipart")


def assert_refused(response, media_root, *words) -> None:
    assert response.status_code == 400, response.content
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, detail
    assert "Error" not in detail and str(media_root) not in detail
    assert Scan.objects.count() == 0
    assert [p for p in media_root.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize(
    "paths",
    [
        ["a/x.dcm", "a/x.dcm/y.dcm", "a/z.dcm"],  # the file first
        ["a/x.dcm/y.dcm", "a/x.dcm", "a/z.dcm"],  # the folder first
        ["a/x.dcm", "a/x.dcm/deeper/y.dcm", "a/z.dcm"],
    ],
)
def test_a_file_and_a_folder_of_the_same_name(alice_api, media_root, slices, paths):
    assert_refused(upload_folder(alice_api, slices, paths), media_root, "both as a file and as a folder", "'a/x.dcm'")


@pytest.mark.parametrize("where", ["file", "folder"])
def test_a_name_over_255_characters(alice_api, media_root, slices, where):
    long = "S" * 256
    path = f"CT/{long}.dcm" if where == "file" else f"{long}/IM1.dcm"
    assert_refused(
        upload_folder(alice_api, slices, ["CT/a.dcm", "CT/b.dcm", path]), media_root, "longer than 255 characters"
    )


def test_a_name_of_255_bytes_is_accepted(alice_api, slices):
    name = "é" * 123 + "S.dcm"  # 246 + 5 = 251 bytes, 128 characters
    response = upload_folder(alice_api, slices, ["CT/a.dcm", "CT/b.dcm", f"CT/{name}"])
    assert response.status_code == 201, response.content


def test_a_path_too_long_for_the_disk(alice_api, media_root, slices):
    deep = "/".join(["F" * 250] * 20) + "/IM1.dcm"  # every name fits, the whole path (5000) does not
    assert_refused(
        upload_folder(alice_api, slices, ["CT/a.dcm", "CT/b.dcm", deep]), media_root, "cannot be stored under its path"
    )
