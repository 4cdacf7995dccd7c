"""No patient name or ID reaches the logs: an upload (not de-identified, named after the
patient), a delineation, a job whose engine fails with the input path in its message, and
an upload whose pre-flight read fails the same way, all logged at DEBUG."""

from __future__ import annotations

import logging
import sys

import pydicom
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests import factories
from webapp.delineation import engine_client
from webapp.delineation.redact import WithholdExceptionMessages

pytestmark = pytest.mark.django_db

PATIENT_NAME, PATIENT_ID = "Doe^Jane", "PID-424242"
SECRETS = ("Doe", "Jane", PATIENT_ID)


@pytest.fixture
def identified_zip(tmp_path) -> bytes:
    paths = factories.dicom_series(tmp_path / "series")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        ds.save_as(path)
    return factories.zip_bytes({f"{PATIENT_NAME}/{p.name}": p.read_bytes() for p in paths})


def _upload(api, data: bytes):
    upload = SimpleUploadedFile(f"{PATIENT_NAME}_{PATIENT_ID}.zip", data, content_type="application/zip")
    return api.post("/api/scans/", {"file": upload}, format="multipart")


def _logged_text(caplog) -> str:
    """Everything the log records hold: messages, exception texts and tracebacks, stacks."""
    formatter = logging.Formatter()
    parts = []
    for record in caplog.records:
        parts.append(record.getMessage())
        if record.exc_info:
            parts.append(formatter.formatException(record.exc_info))
        parts += [record.exc_text or "", record.stack_info or ""]
    return "\n".join(parts)


def _assert_clean(caplog) -> None:
    text = _logged_text(caplog)
    assert caplog.records, "nothing was logged: the test would prove nothing"
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} in the logs:\n{text}"


def test_upload_and_jobs_log_no_patient_name_or_id(
    alice_api, identified_zip, fake_engine, monkeypatch, caplog, django_capture_on_commit_callbacks
):
    caplog.set_level(logging.DEBUG)
    response = _upload(alice_api, identified_zip)
    assert response.status_code == 201, response.content
    scan = response.json()
    assert PATIENT_NAME in scan["name"]  # the name was there to be leaked

    with django_capture_on_commit_callbacks(execute=True):
        job = alice_api.post("/api/jobs/", {"scan": scan["id"], "model": "hn-oar"}, format="json").json()
    assert alice_api.get(f"/api/jobs/{job['id']}/").json()["status"] == "succeeded"

    def failing_engine(input_path, model_name, out_dir, progress=None, series=None):
        raise RuntimeError(f"cannot read {input_path}")  # an engine bug quoting the input path

    monkeypatch.setattr(engine_client, "run_segmentation", failing_engine)
    with django_capture_on_commit_callbacks(execute=True):
        job = alice_api.post("/api/jobs/", {"scan": scan["id"], "model": "hn-oar"}, format="json").json()
    failed = alice_api.get(f"/api/jobs/{job['id']}/").json()
    assert failed["status"] == "failed" and "RuntimeError" in failed["error"]
    assert any(r.levelno >= logging.ERROR for r in caplog.records)  # the failure was logged
    _assert_clean(caplog)


def test_a_failing_preflight_logs_no_patient_name_or_id(alice_api, identified_zip, monkeypatch, caplog):
    import engine.io.preflight

    def failing_reader(path):
        raise ValueError(f"unexpected tag in {path}")  # a reader bug quoting the file

    monkeypatch.setattr(engine.io.preflight, "inspect_input", failing_reader)
    caplog.set_level(logging.DEBUG)
    response = _upload(alice_api, identified_zip)
    assert response.status_code == 400, response.content
    assert any(r.levelno >= logging.ERROR for r in caplog.records)
    _assert_clean(caplog)


def test_an_entered_patient_id_is_not_logged(alice_api, identified_zip, fake_engine, caplog):
    """The Patient ID typed in the upload's ``patient_id`` field (and set later on the scan,
    and refused when unusable) reaches no log record, nor does the patient's page."""
    caplog.set_level(logging.DEBUG)
    entered = "PID-777777"
    upload = SimpleUploadedFile("ct.nii.gz", factories.nifti_bytes(), content_type="application/gzip")
    fields = {"file": upload, "patient_id": entered, "patient_label": PATIENT_NAME}
    response = alice_api.post("/api/scans/", fields, format="multipart")
    assert response.status_code == 201 and response.json()["patient"]["patient_id"] == entered
    scan, patient = response.json()["id"], response.json()["patient"]["id"]
    assert alice_api.get(f"/api/patients/{patient}/").status_code == 200
    response = alice_api.patch(f"/api/scans/{scan}/", {"patient_id": PATIENT_ID}, format="json")
    assert response.status_code == 200 and response.json()["patient"]["patient_id"] == PATIENT_ID
    response = _upload(alice_api, identified_zip)  # DICOM: grouped by the Patient ID of its files
    assert response.status_code == 201 and response.json()["patient"]["patient_id"] == PATIENT_ID
    bad = SimpleUploadedFile("ct.nii.gz", factories.nifti_bytes(), content_type="application/gzip")
    response = alice_api.post("/api/scans/", {"file": bad, "patient_id": f"{entered}\\2"}, format="multipart")
    assert response.status_code == 400, response.content
    text = _logged_text(caplog)
    assert caplog.records and entered not in text
    _assert_clean(caplog)


def test_the_console_log_withholds_exception_messages_of_every_logger():
    """Django's request logger and Celery's log exceptions themselves: the handler of
    settings.LOGGING renders every exception by type and frames only."""
    handler = next(
        h for h in logging.getLogger().handlers if any(isinstance(f, WithholdExceptionMessages) for f in h.filters)
    )
    try:
        try:
            open(f"/nonexistent/{PATIENT_NAME}_{PATIENT_ID}.zip")  # noqa: SIM115
        except OSError as exc:
            raise RuntimeError(f"upload {PATIENT_ID} failed") from exc
    except RuntimeError:
        record = logging.getLogger("django.request").makeRecord(
            "django.request", logging.ERROR, __file__, 1, "Internal Server Error: %s", ("/api/scans/",), sys.exc_info()
        )
    assert handler.filter(record)
    text = handler.format(record)
    assert "Internal Server Error: /api/scans/" in text
    assert "FileNotFoundError" in text and "builtins.RuntimeError" in text and "test_no_patient_data_in_logs.py" in text
    for secret in SECRETS:
        assert secret not in text, text
