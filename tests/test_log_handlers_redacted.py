"""Every log handler gets the redacted record: with DEBUG on (the default of `make run`),
a failing upload whose folder is named after the patient and whose files are named by their
SOP Instance UIDs leaves no UID and no part of its paths in any handler's output (Django's
own console handler included), nor in any record. pydicom and highdicom log nothing below
WARNING, where they quote UIDs and file names."""

from __future__ import annotations

import io
import logging

import pydicom
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from tests import factories
from webapp.delineation import uploads

pytestmark = pytest.mark.django_db

FOLDER = "Doe^John"


def all_loggers() -> list[logging.Logger]:
    named = [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    return [logging.getLogger(), *named]


@pytest.fixture
def handler_output(settings):
    """What every stream handler of every logger writes, DEBUG on."""
    settings.DEBUG = True
    replaced: dict[logging.StreamHandler, object] = {}
    for logger in all_loggers():
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler not in replaced:
                replaced[handler] = handler.setStream(io.StringIO())
    assert replaced, "no stream handler: the test would prove nothing"
    yield lambda: "".join(h.stream.getvalue() for h in replaced)
    for handler, stream in replaced.items():
        handler.setStream(stream)


def test_a_failing_upload_logs_no_uid_nor_path(alice, tmp_path, monkeypatch, caplog, handler_output):
    paths = factories.dicom_series(tmp_path / "src", slices=3)
    headers = [pydicom.dcmread(p) for p in paths]
    uids = {h.SOPInstanceUID for h in headers} | {headers[0].SeriesInstanceUID, headers[0].StudyInstanceUID}
    names = [f"{FOLDER}/{h.SOPInstanceUID}.dcm" for h in headers]

    def failing_check(path) -> bool:
        raise PermissionError(13, "Permission denied", str(path))  # an OS error quoting the stored path

    monkeypatch.setattr(uploads, "is_dicom", failing_check)
    caplog.set_level(logging.DEBUG)
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(alice)
    files = [SimpleUploadedFile(p.name, p.read_bytes()) for p in paths]
    response = client.post("/api/scans/", {"files": files, "paths": names}, format="multipart")
    assert response.status_code == 500

    output = handler_output()
    records = "\n".join(
        [
            r.getMessage()
            + (r.exc_text or "")
            + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
            for r in caplog.records
        ]
    )
    assert "PermissionError" in output and "Internal Server Error: /api/scans/" in output  # it was logged
    for secret in [FOLDER, "Doe", *uids]:
        assert secret not in output, f"{secret!r} in a handler's output:\n{output}"
        assert secret not in records, f"{secret!r} in a record:\n{records}"


def test_django_logs_through_the_redacting_handler_only():
    django_logger = logging.getLogger("django")
    assert django_logger.handlers == [] and django_logger.propagate


@pytest.mark.parametrize("name", ["pydicom", "highdicom", "highdicom.seg.sop", "pydicom.filereader"])
def test_dicom_libraries_log_nothing_below_warning(name, caplog):
    caplog.set_level(logging.DEBUG)  # the root at DEBUG, as LOG_LEVEL=DEBUG would set it
    logger = logging.getLogger(name)
    assert not logger.isEnabledFor(logging.INFO)
    logger.info("SOP Instance UID 1.2.826.0.1.3680043.8.498.1")
    assert "1.2.826.0.1.3680043.8.498.1" not in caplog.text
