"""Every input of the malformed corpus (``tests/malformed_corpus.py``) through the real API,
as Alice: refused with a 4xx and a message that names the problem, keeping nothing; or,
where the upload is sound enough to be accepted, the job fails in the worker (the real
engine task, in-process) with such a message, leaves no output, and the next job runs."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.conftest import fake_segmentation
from tests.malformed_corpus import AUDIT_FAILS, JOB_FAILS, REFUSED, Malformed, corpus
from webapp.delineation import engine_client, runner
from webapp.delineation.models import Job, Scan

pytestmark = pytest.mark.django_db

CORPUS = corpus()
# What a physician should never read: Python's exception names, tracebacks, file paths of the server.
UNCLEAR = re.compile(r"Traceback|\b\w*(Error|Exception)\b|\bline \d+|site-packages|/tmp/|\.py\b")


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    """Hundreds of tests each create Alice: a fast hasher keeps the corpus within a minute or two."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def entries(outcome: str) -> list:
    return [pytest.param(e, id=e.id) for e in CORPUS if e.outcome == outcome]


def upload(client, entry: Malformed):
    if entry.files:
        files = [SimpleUploadedFile(PurePosixPath(p).name, data) for p, data in entry.files.items()]
        return client.post("/api/scans/", {"files": files, "paths": list(entry.files)}, format="multipart")
    return client.post("/api/scans/", {"file": SimpleUploadedFile(entry.filename, entry.data)}, format="multipart")


def assert_clear(message: str, entry: Malformed, media_root) -> None:
    """Non-empty, no traceback or exception name or server path, and it names the problem."""
    assert message.strip(), entry.id
    assert not UNCLEAR.search(message), (entry.id, message)
    assert str(media_root) not in message, (entry.id, message)
    assert any(word in message.lower() for word in entry.words), (entry.id, message, entry.words)


def nothing_stored(media_root) -> bool:
    scans = media_root / "scans"
    return not scans.exists() or not any(scans.iterdir())


def test_the_corpus_covers_every_category_with_300_inputs():
    categories = {e.category for e in CORPUS}
    assert len(CORPUS) >= 300
    for needed in (
        "truncated DICOM",
        "wrong VR",
        "pixel data too short",
        "Rows = 0",
        "absurd dimensions",
        "unsupported transfer syntax",
        "NIfTI with NaNs",
        "zero spacing",
        "2D or 5D shape",
        "non-invertible affine",
        "gzip garbage",
        "random bytes",
        "RTSTRUCT outside the image",
    ):
        assert sum(e.category == needed for e in CORPUS) >= 4, needed
    assert len(categories) >= 13
    assert corpus() is CORPUS and [e.data for e in corpus()] == [e.data for e in CORPUS]


@pytest.mark.parametrize("entry", entries(REFUSED))
def test_refused_at_upload_with_a_clear_message(alice_api, media_root, entry):
    response = upload(alice_api, entry)
    assert 400 <= response.status_code < 500, (entry.id, response.status_code, response.content[:300])
    assert_clear(response.json()["detail"], entry, media_root)
    assert Scan.objects.count() == 0
    assert nothing_stored(media_root)


def _accepted(client, entry: Malformed) -> dict:
    response = upload(client, entry)
    assert response.status_code == 201, (entry.id, response.content[:300])
    return response.json()


def _assert_failed_cleanly(client, job_id: str, entry: Malformed, media_root) -> None:
    job = Job.objects.get(pk=job_id)
    assert job.status == Job.Status.FAILED, (entry.id, job.status, job.error)
    assert not job.error.startswith(("Internal error", "The job stopped unexpectedly")), (entry.id, job.error)
    assert_clear(job.error, entry, media_root)
    assert not job.output_dir.exists(), entry.id  # nothing half-stored
    shown = client.get(f"/api/jobs/{job_id}/").json()
    assert shown["downloads"] == {} and shown["error"] == job.error
    assert client.get(f"/api/jobs/{job_id}/labels.nii.gz").status_code == 409


def _next_job_succeeds(client, monkeypatch, capture, scan_id: str) -> None:
    """The worker is still usable: a valid job queued after the failure runs to the end."""
    monkeypatch.setattr(engine_client, "available_models", lambda: ["hn-oar"])
    monkeypatch.setattr(engine_client, "run_segmentation", fake_segmentation)
    with capture(execute=True):
        response = client.post("/api/jobs/", {"scan": scan_id, "model": "hn-oar"}, format="json")
    assert response.status_code == 201, response.content
    assert client.get(f"/api/jobs/{response.json()['id']}/").json()["status"] == "succeeded"


@pytest.mark.parametrize("entry", entries(JOB_FAILS))
def test_accepted_upload_fails_its_job_with_a_clear_message(
    alice, alice_api, media_root, monkeypatch, django_capture_on_commit_callbacks, alice_scan, entry
):
    scan = _accepted(alice_api, entry)
    job = Job.objects.create(
        owner=alice, scan_id=scan["id"], model_name="hn-oar", series_key=scan["preflight"]["selected"]
    )
    assert runner.execute_job(job.id) == Job.Status.FAILED  # the real engine, in-process; nothing raised
    _assert_failed_cleanly(alice_api, str(job.id), entry, media_root)
    _next_job_succeeds(alice_api, monkeypatch, django_capture_on_commit_callbacks, alice_scan["id"])


@pytest.mark.parametrize("entry", entries(AUDIT_FAILS))
def test_structure_set_outside_the_image_fails_the_audit_with_a_clear_message(
    alice_api, media_root, monkeypatch, django_capture_on_commit_callbacks, alice_scan, entry
):
    scan = _accepted(alice_api, entry)
    assert any(o["modality"] == "RTSTRUCT" for o in scan["preflight"]["other_objects"])
    with django_capture_on_commit_callbacks(execute=True):  # the real engine, eagerly
        response = alice_api.post("/api/jobs/", {"scan": scan["id"], "model": "hn-rt", "kind": "audit"}, format="json")
    assert response.status_code == 201, response.content
    _assert_failed_cleanly(alice_api, response.json()["id"], entry, media_root)
    _next_job_succeeds(alice_api, monkeypatch, django_capture_on_commit_callbacks, alice_scan["id"])
