"""POST /api/jobs/: a job on one's own scan with a shipped model is queued, run and recorded."""

from __future__ import annotations

import zipfile

import pytest

from tests import factories
from webapp.delineation import engine_client
from webapp.delineation.models import Job

pytestmark = pytest.mark.django_db


def create(client, scan_id, model="hn-oar", capture=None):
    if capture is None:
        return client.post("/api/jobs/", {"scan": scan_id, "model": model}, format="json")
    with capture(execute=True):
        return client.post("/api/jobs/", {"scan": scan_id, "model": model}, format="json")


def test_job_runs_and_records_results(
    alice_api, alice, alice_dicom_scan, fake_engine, django_capture_on_commit_callbacks, media_root
):
    response = create(alice_api, alice_dicom_scan["id"], capture=django_capture_on_commit_callbacks)
    assert response.status_code == 201, response.content
    job = alice_api.get(f"/api/jobs/{response.json()['id']}/").json()
    assert job["status"] == "succeeded" and job["progress"] == 100 and job["error"] == ""
    assert job["model"] == "hn-oar" and job["scan"] == alice_dicom_scan["id"]
    assert job["weights_sha256"] == "ab" * 32 and job["input_kind"] == "dicom"
    assert [s["name"] for s in job["structures"]] == ["Brainstem", "Mandible"]
    for stage in ("queue", "ingest", "preprocess", "network", "export", "total"):
        assert stage in job["timings"], job["timings"]
    assert job["started"] and job["finished"]
    assert job["downloads"]["rtstruct"].endswith("/rtstruct.dcm")
    # The engine got the stored original and wrote under the scan's folder.
    (call,) = fake_engine
    assert call["input_path"] == media_root / "scans" / alice_dicom_scan["id"] / "original" / "series.zip"
    assert call["out_dir"] == media_root / "scans" / alice_dicom_scan["id"] / "jobs" / job["id"]
    assert Job.objects.get(pk=job["id"]).owner == alice


def test_job_is_sent_only_after_commit(alice_api, alice_scan, fake_engine, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = create(alice_api, alice_scan["id"])
    assert response.status_code == 201
    assert response.json()["status"] == "queued"
    assert len(callbacks) == 1 and not fake_engine


def test_unknown_model(alice_api, alice_scan, fake_engine):
    response = create(alice_api, alice_scan["id"], model="prostate-xl")
    assert response.status_code == 400
    message = response.json()["model"][0]
    assert "Unknown model 'prostate-xl'" in message and "hn-oar" in message
    assert Job.objects.count() == 0


def test_no_model_installed(alice_api, alice_scan, monkeypatch):
    monkeypatch.setattr(engine_client, "available_models", lambda: [])
    response = create(alice_api, alice_scan["id"])
    assert response.status_code == 400
    assert "no delineation model is installed" in response.json()["model"][0]


def test_scan_of_another_user_is_not_found(bob_api, alice_scan, fake_engine):
    response = create(bob_api, alice_scan["id"])
    assert response.status_code == 400
    assert "No scan with id" in response.json()["scan"][0]
    assert Job.objects.count() == 0


@pytest.mark.parametrize("scan_id", ["not-a-uuid", 17, None])
def test_malformed_scan_id(alice_api, fake_engine, scan_id):
    response = create(alice_api, scan_id)
    assert response.status_code == 400
    assert "scan" in response.json()


def test_missing_fields(alice_api, fake_engine):
    response = alice_api.post("/api/jobs/", {}, format="json")
    assert response.status_code == 400
    assert set(response.json()) == {"scan", "model"}


def test_engine_input_error_fails_the_job_with_its_message(
    alice_api, alice_scan, fake_engine, monkeypatch, django_capture_on_commit_callbacks
):
    def refuse(input_path, model_name, out_dir, progress=None, series=None):
        progress("ingest", 0)
        raise engine_client.DelineationError("The series has a gantry tilt of 12 degrees, which is not supported.")

    monkeypatch.setattr(engine_client, "run_segmentation", refuse)
    response = create(alice_api, alice_scan["id"], capture=django_capture_on_commit_callbacks)
    job = alice_api.get(f"/api/jobs/{response.json()['id']}/").json()
    assert job["status"] == "failed"
    assert job["error"] == "The series has a gantry tilt of 12 degrees, which is not supported."
    assert "total" in job["timings"] and job["downloads"] == {}


def test_unexpected_engine_crash_fails_the_job(
    alice_api, alice_scan, fake_engine, monkeypatch, django_capture_on_commit_callbacks
):
    def crash(input_path, model_name, out_dir, progress=None, series=None):
        progress("network", 20)
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(engine_client, "run_segmentation", crash)
    response = create(alice_api, alice_scan["id"], capture=django_capture_on_commit_callbacks)
    job = alice_api.get(f"/api/jobs/{response.json()['id']}/").json()
    assert job["status"] == "failed"
    assert "network" in job["error"] and "CUDA out of memory" in job["error"]


def test_engine_not_installed(alice_api, alice_scan, monkeypatch, django_capture_on_commit_callbacks):
    """Without the engine's segment module the job fails with a clear message (real service code)."""
    import builtins

    real_import = builtins.__import__

    def no_engine(name, *args, **kwargs):
        if name.startswith("engine.infer"):
            raise ImportError("No module named 'engine.infer.segment'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(engine_client, "available_models", lambda: ["hn-oar"])
    monkeypatch.setattr(builtins, "__import__", no_engine)
    response = create(alice_api, alice_scan["id"], capture=django_capture_on_commit_callbacks)
    job = alice_api.get(f"/api/jobs/{response.json()['id']}/").json()
    assert job["status"] == "failed"
    assert "engine is not available" in job["error"]


def test_list_jobs_filtered_by_scan(alice_api, alice_job, alice_scan, fake_engine):
    other = create(alice_api, alice_scan["id"]).json()
    ids = {j["id"] for j in alice_api.get("/api/jobs/").json()}
    assert ids == {alice_job["id"], other["id"]}
    only = alice_api.get(f"/api/jobs/?scan={alice_scan['id']}").json()
    assert [j["id"] for j in only] == [other["id"]]


def test_models_endpoint(alice_api, fake_engine):
    response = alice_api.get("/api/models/")
    assert response.status_code == 200
    assert [m["name"] for m in response.json()] == ["hn-oar"]


def test_a_scan_with_several_series_needs_a_choice(
    alice_api, tmp_path, fake_engine, django_capture_on_commit_callbacks
):
    from django.core.files.uploadedfile import SimpleUploadedFile

    archive = tmp_path / "two.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for folder, slices in (("a", 4), ("b", 5)):
            for p in factories.dicom_series(tmp_path / folder, slices=slices, seed=slices):
                zf.write(p, f"{folder}/{p.name}")
    scan = alice_api.post(
        "/api/scans/", {"file": SimpleUploadedFile("two.zip", archive.read_bytes())}, format="multipart"
    ).json()
    assert scan["preflight"]["selected"] is None
    response = alice_api.post("/api/jobs/", {"scan": scan["id"], "model": "hn-oar"}, format="json")
    assert response.status_code == 400 and "choose one" in str(response.json()["series"])
    response = alice_api.post("/api/jobs/", {"scan": scan["id"], "model": "hn-oar", "series": "1.2.3"}, format="json")
    assert response.status_code == 400 and "no image series" in str(response.json()["series"])
    key = next(s["key"] for s in scan["preflight"]["series"] if s["images"] == 5)
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_api.post("/api/jobs/", {"scan": scan["id"], "model": "hn-oar", "series": key}, format="json")
    assert response.status_code == 201 and response.json()["series"] == key
    assert fake_engine[-1]["series"] == key
