"""The size and file-count limits of an upload are applied while the request streams in:
the upload stops at the limit, gets 413 with a message, and nothing of it is stored."""

from __future__ import annotations

import io
import os

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.test import Client, RequestFactory
from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart

from tests import factories
from webapp.delineation.models import Scan
from webapp.delineation.upload_limits import refusal_of
from webapp.delineation.uploads import UploadError, store_upload

pytestmark = pytest.mark.django_db

KIB = 1 << 10


def files_under(root) -> list:
    return [p for p in root.rglob("*") if p.is_file()]


class CountingStream:
    """A request body that records how much of it was read."""

    def __init__(self, stream) -> None:
        self.stream, self.read_bytes = stream, 0

    def read(self, size=-1) -> bytes:
        data = self.stream.read(size)
        self.read_bytes += len(data)
        return data

    def readline(self, size=-1) -> bytes:
        data = self.stream.readline(size)
        self.read_bytes += len(data)
        return data


class StoredBytes(FileUploadHandler):
    """Placed after UploadLimitHandler: counts the bytes passed on to the handlers that store files."""

    count = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        StoredBytes.count += len(raw_data)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


@pytest.fixture
def stored_bytes(settings):
    handlers = list(settings.FILE_UPLOAD_HANDLERS)
    assert handlers[0] == "webapp.delineation.upload_limits.UploadLimitHandler"
    settings.FILE_UPLOAD_HANDLERS = [handlers[0], f"{__name__}.StoredBytes", *handlers[1:]]
    StoredBytes.count = 0
    return StoredBytes


def parse(data: dict) -> tuple[CountingStream, int, object]:
    """Parse a multipart body through FILE_UPLOAD_HANDLERS; returns the stream, the body's size, the request."""
    body = encode_multipart(BOUNDARY, data)
    request = RequestFactory().generic("POST", "/api/scans/", body, content_type=MULTIPART_CONTENT)
    stream = CountingStream(io.BytesIO(body))
    request._stream = stream
    assert request.FILES is not None  # reading the body runs the upload handlers
    return stream, len(body), request


def test_oversized_upload_stops_at_the_limit(settings, stored_bytes):
    """Content-Length near the limit: nothing beyond the limit is passed on to be stored; the
    small rest of the body is read and discarded so that the client gets the answer."""
    settings.DELINEO_MAX_UPLOAD_BYTES = 256 * KIB
    settings.DELINEO_MAX_UPLOAD_FILES = 1
    stream, size, request = parse({"name": "x", "file": SimpleUploadedFile("ct.nii.gz", b"\1" * (1024 * KIB))})
    refusal = refusal_of(request)
    assert isinstance(refusal, UploadError) and refusal.status == 413
    assert "larger than 256.0 KiB, the limit on this server" in refusal.message
    assert "file" not in request.FILES
    assert request.POST["name"] == "x", "fields before the file are kept (the CSRF token of the page)"
    assert 0 < stored_bytes.count <= 256 * KIB
    assert stream.read_bytes == size


def test_declared_oversized_upload_is_not_read(settings, stored_bytes):
    """A Content-Length far above the limit stops the upload before the file's bytes are read."""
    settings.DELINEO_MAX_UPLOAD_BYTES = 64 * KIB
    settings.DELINEO_MAX_UPLOAD_FILES = 1
    stream, size, request = parse({"file": SimpleUploadedFile("ct.zip", b"\1" * (4096 * KIB))})
    assert refusal_of(request).status == 413
    assert stored_bytes.count == 0
    assert stream.read_bytes < 3 * 64 * KIB < size


def test_upload_within_the_limit_is_read_whole(settings, stored_bytes):
    """The opposite case: the two tests above fail if the handler stops every upload."""
    settings.DELINEO_MAX_UPLOAD_BYTES = 2048 * KIB
    stream, size, request = parse({"file": SimpleUploadedFile("ct.nii.gz", b"\1" * (1024 * KIB))})
    assert refusal_of(request) is None
    assert request.FILES["file"].size == 1024 * KIB == stored_bytes.count
    assert stream.read_bytes == size


def test_api_refuses_oversized_upload_and_keeps_nothing(alice_api, settings, media_root):
    settings.DELINEO_MAX_UPLOAD_BYTES = 100 * KIB
    data = factories.zip_bytes({f"CT/IM{k}.dcm": os.urandom(64 * KIB) for k in range(3)})
    response = alice_api.post("/api/scans/", {"file": SimpleUploadedFile("ct.zip", data)}, format="multipart")
    assert response.status_code == 413
    assert "limit on this server" in response.json()["detail"]
    assert Scan.objects.count() == 0
    assert files_under(media_root) == []


def test_upload_page_refuses_oversized_upload_with_its_message(alice, settings, media_root):
    """The page form posts its CSRF token before the file: the physician sees the message, not a CSRF error."""
    settings.DELINEO_MAX_UPLOAD_BYTES = 100 * KIB
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    browser.get("/upload/")
    token = browser.cookies["csrftoken"].value
    big = SimpleUploadedFile("ct.nii.gz", factories.nifti_bytes(shape=(64, 64, 64)))
    response = browser.post("/upload/", {"csrfmiddlewaretoken": token, "file": big})
    assert response.status_code == 413
    assert "the limit on this server" in response.content.decode()
    assert Scan.objects.count() == 0 and files_under(media_root) == []


def test_file_count_limit_is_applied_while_streaming(alice_api, settings, tmp_path, media_root):
    """Django's own limit (a bare 400) is set one file higher; this one answers 413 and says why."""
    assert settings.DATA_UPLOAD_MAX_NUMBER_FILES == settings.DELINEO_MAX_UPLOAD_FILES + 1
    settings.DELINEO_MAX_UPLOAD_FILES, settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2, 3
    paths = factories.dicom_series(tmp_path / "s", slices=5)
    files = [SimpleUploadedFile(p.name, p.read_bytes()) for p in paths]
    response = alice_api.post("/api/scans/", {"files": files}, format="multipart")
    assert response.status_code == 413
    assert response.json()["detail"] == (
        "The upload has more than 2 files, the limit on this server. Upload one series at a time."
    )
    assert Scan.objects.count() == 0 and files_under(media_root) == []


def test_folder_at_the_file_count_limit_is_accepted(alice_api, settings, tmp_path):
    settings.DELINEO_MAX_UPLOAD_FILES = 3
    paths = factories.dicom_series(tmp_path / "s", slices=3)
    files = [SimpleUploadedFile(p.name, p.read_bytes()) for p in paths]
    response = alice_api.post("/api/scans/", {"files": files}, format="multipart")
    assert response.status_code == 201, response.content


def test_upload_folder_is_fresh(tmp_path):
    """store_upload never writes into (nor, on refusal, removes) a folder that exists already."""
    target = tmp_path / "scans" / "existing"
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("another scan")
    with pytest.raises(FileExistsError):
        store_upload(target, SimpleUploadedFile("ct.nii.gz", factories.nifti_bytes()), [], [])
    assert (target / "keep.txt").read_text() == "another scan"
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
