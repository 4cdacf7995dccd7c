"""Contour audit jobs: POST /api/jobs/ with kind=audit, validated against the scan's
pre-flight report and the model's card; the audit shown from audit.json, never the upload's name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from tests import factories
from tests.conftest import write_fake_structures
from webapp.delineation import engine_client, rules, runner
from webapp.delineation.models import Job

pytestmark = pytest.mark.django_db

AUDIT_DOCUMENT = {
    "structures": [
        {
            "roi_name": "BrainStem",
            "structure": "Brainstem",
            "qam_score": -0.81,
            "dice": 0.41,
            "msd_mm": 4.2,
            "hd95_mm": 11.0,
            "model_volume_cm3": 20.1,
            "contour_volume_cm3": 35.2,
            "flagged": True,
            "reasons": [
                "the quality score (-0.81) and the Dice with the model's delineation (0.41) together rate it -2.90, "
                "below -1.10: further from a sound contour of this structure than 9 in 10 sound contours are"
            ],
            "check_score": -2.9,
            "check_auc": 0.91,
            "check_threshold": -1.1,
            "check_auc_val": 0.88,
        },
        {
            "roi_name": "Mandible",
            "structure": "Mandible",
            "qam_score": 0.9,
            "dice": 0.91,
            "msd_mm": 0.8,
            "hd95_mm": 2.1,
            "model_volume_cm3": 60.0,
            "contour_volume_cm3": 61.5,
            "flagged": False,
            "reasons": [],
            "check_score": 0.4,
            "check_auc": 0.94,
            "check_threshold": -1.2,
            "check_auc_val": 0.93,
        },
    ],
    "notes": ["PTV70: not audited (the model does not delineate a structure of that name)"],
    "model_name": "hn-rt",
    "weights_sha256": "cd" * 32,
    "qam_sha256": "ef" * 32,
    "timings_s": {"ingest": 0.5, "audit": 2.0},
    "input": "Doe^John.zip",  # an upload's file name may name the patient
}


def fake_audit(input_path, model_name, out_dir, progress=None, series=None) -> engine_client.AuditEngineResult:
    """Stands in for ``engine.infer.audit.audit_file``: the model's delineation as image.nii.gz,
    labels.nii.gz and structures.json, and ``AUDIT_DOCUMENT`` as audit.json."""
    report = progress or (lambda stage, pct: None)
    out_dir = Path(out_dir)
    report("ingest", 0)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    labels = np.zeros((20, 24, 10), dtype=np.uint8)
    labels[6:10, 6:12, 3:6] = 1
    labels[12:15, 14:18, 4:7] = 2
    report("network", 20)
    nib.save(nib.Nifti1Image(np.full(labels.shape, 40, dtype=np.int16), affine), out_dir / "image.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), out_dir / "labels.nii.gz")
    table = write_fake_structures(out_dir, labels, affine, masks=False)
    (out_dir / "audit.json").write_text(json.dumps(AUDIT_DOCUMENT))
    report("export", 95)
    return engine_client.AuditEngineResult(
        structures=table,
        audit=AUDIT_DOCUMENT["structures"],
        timings_s={"ingest": 0.5, "audit": 2.0},
        model_name=model_name,
        weights_sha256="cd" * 32,
        notes=list(AUDIT_DOCUMENT["notes"]),
    )


@pytest.fixture
def auditing(monkeypatch, fake_engine):
    """Two shipped models, hn-oar (no critic) and hn-rt (with one); the audit is ``fake_audit``."""
    calls: list[dict] = []

    def run(input_path, model_name, out_dir, progress=None, series=None):
        calls.append({"input_path": Path(input_path), "model_name": model_name, "series": series})
        return fake_audit(input_path, model_name, out_dir, progress, series)

    monkeypatch.setattr(engine_client, "available_models", lambda: ["hn-oar", "hn-rt"])
    monkeypatch.setattr(engine_client, "audit_models", lambda: ["hn-rt"])
    monkeypatch.setattr(engine_client, "run_audit", run)
    return calls


@pytest.fixture
def rtstruct_zip(tmp_path) -> bytes:
    return factories.dicom_zip_with_rtstruct(tmp_path / "with-rs", ("Brainstem", "PTV70"))


@pytest.fixture
def alice_rtstruct_scan(alice_api, rtstruct_zip):
    upload = SimpleUploadedFile("ct-and-rs.zip", rtstruct_zip, content_type="application/zip")
    response = alice_api.post("/api/scans/", {"file": upload}, format="multipart")
    assert response.status_code == 201, response.content
    return response.json()


def post_audit(client, scan_id, model="hn-rt", capture=None):
    payload = {"scan": scan_id, "model": model, "kind": "audit"}
    if capture is None:
        return client.post("/api/jobs/", payload, format="json")
    with capture(execute=True):
        return client.post("/api/jobs/", payload, format="json")


def audit_job_on_disk(owner, scan_id, status=Job.Status.SUCCEEDED, kind=Job.Kind.AUDIT) -> Job:
    """A job written straight to the database, its output folder holding AUDIT_DOCUMENT."""
    job = Job.objects.create(owner=owner, scan_id=scan_id, model_name="hn-rt", kind=kind, status=status)
    job.output_dir.mkdir(parents=True)
    (job.output_dir / "audit.json").write_text(json.dumps(AUDIT_DOCUMENT))
    job.result_dir = str(job.output_dir.relative_to(settings.MEDIA_ROOT))
    job.save()
    return job


# --- Running an audit --------------------------------------------------------------------


def test_audit_job_runs_and_shows_the_audit(
    alice_api, alice_rtstruct_scan, auditing, django_capture_on_commit_callbacks
):
    (rs,) = rules.structure_sets(alice_rtstruct_scan["preflight"])
    assert rs["rois"] == ["Brainstem", "PTV70"]
    response = post_audit(alice_api, alice_rtstruct_scan["id"], capture=django_capture_on_commit_callbacks)
    assert response.status_code == 201, response.content
    assert response.json()["kind"] == "audit"
    detail = alice_api.get(f"/api/jobs/{response.json()['id']}/")
    job = detail.json()
    assert job["status"] == "succeeded", job
    assert job["kind"] == "audit" and job["model"] == "hn-rt" and job["weights_sha256"] == "cd" * 32
    assert [s["name"] for s in job["structures"]] == ["Brainstem", "Mandible"]  # the model's delineation
    assert job["notes"] == AUDIT_DOCUMENT["notes"] and job["input_kind"] == "dicom"
    assert set(job["audit"]) == {"model_name", "structures", "notes"}
    assert [r["roi_name"] for r in job["audit"]["structures"]] == ["BrainStem", "Mandible"]
    assert job["audit"]["structures"][0]["flagged"] and job["audit"]["structures"][0]["reasons"]
    assert "Doe" not in detail.content.decode()
    assert job["timings"]["audit"] == 2.0 and "total" in job["timings"]
    # The viewer overlay works as for a delineation; the audit is a download.
    stored = Job.objects.get(pk=job["id"])
    assert (stored.result_path / "viewer" / "meta.json").exists()
    assert job["downloads"]["rtstruct"] is None and job["downloads"]["structures_zip"] is None
    download = alice_api.get(job["downloads"]["audit"])
    assert download.status_code == 200 and download["Content-Type"] == "application/json"
    assert json.loads(b"".join(download.streaming_content))["structures"] == AUDIT_DOCUMENT["structures"]
    response = alice_api.get(f"/api/jobs/{job['id']}/rtstruct.dcm")
    assert response.status_code == 404 and "contour audit writes" in response.json()["detail"]
    response = alice_api.get(f"/api/jobs/{job['id']}/structures.zip")
    assert response.status_code == 404 and "contour audit writes" in response.json()["detail"]
    assert set(stored.checksums) == {"image.nii.gz", "labels.nii.gz", "structures.json", "audit.json"} | {
        f"viewer/{name}" for name in ("image.npy", "labels.npy", "meta.json")
    }
    (call,) = auditing
    assert call["model_name"] == "hn-rt" and call["series"] == alice_rtstruct_scan["preflight"]["selected"]


def test_segment_is_the_default_kind(alice_job):
    assert alice_job["kind"] == "segment" and alice_job["audit"] is None
    assert alice_job["downloads"]["audit"] is None


# --- Validation --------------------------------------------------------------------------


def test_model_without_a_critic_cannot_audit(alice_api, alice_rtstruct_scan, auditing):
    response = post_audit(alice_api, alice_rtstruct_scan["id"], model="hn-oar")
    assert response.status_code == 400
    (message,) = response.json()["model"]
    assert "'hn-oar' cannot audit contours" in message and "Models that can: hn-rt." in message
    assert Job.objects.count() == 0


def test_without_any_auditing_model_the_message_names_what_is_needed(
    alice_api, alice_rtstruct_scan, auditing, monkeypatch
):
    monkeypatch.setattr(engine_client, "audit_models", lambda: [])
    response = post_audit(alice_api, alice_rtstruct_scan["id"])
    assert response.status_code == 400
    (message,) = response.json()["model"]
    assert "contour-quality critic" in message and "hn-rt" in message


def test_scan_without_a_structure_set_cannot_be_audited(alice_api, alice_dicom_scan, auditing):
    assert rules.structure_sets(alice_dicom_scan["preflight"]) == []
    response = post_audit(alice_api, alice_dicom_scan["id"])
    assert response.status_code == 400
    assert "no structure set (RTSTRUCT)" in response.json()["scan"][0]
    assert "model" not in response.json()
    assert Job.objects.count() == 0


def test_nifti_scan_cannot_be_audited(alice_api, alice_scan, auditing):
    response = post_audit(alice_api, alice_scan["id"], model="hn-oar")
    assert response.status_code == 400
    body = response.json()
    assert "A NIfTI scan cannot be audited" in body["scan"][0]
    assert "cannot audit contours" in body["model"][0]  # every reason at once
    assert Job.objects.count() == 0


def test_unknown_kind(alice_api, alice_rtstruct_scan, auditing):
    response = alice_api.post(
        "/api/jobs/", {"scan": alice_rtstruct_scan["id"], "model": "hn-rt", "kind": "review"}, format="json"
    )
    assert response.status_code == 400 and "kind" in response.json()


def test_models_say_which_can_audit(alice_api, monkeypatch, tmp_path):
    """The real card reader: a card with a ``qam`` entry can audit, hn-oar's cannot."""
    import engine.models.registry as registry

    shutil.copy(registry.WEIGHTS_DIR / "hn-oar.json", tmp_path / "hn-oar.json")
    card = json.loads((tmp_path / "hn-oar.json").read_text())
    card["name"] = "hn-rt"
    card["qam"] = {"weights": "hn-rt-qam.pt", "sha256": "0" * 64, "lambda": 1.0, "patch": 64, "threshold": -0.2}
    (tmp_path / "hn-rt.json").write_text(json.dumps(card))
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(engine_client, "available_models", lambda: ["hn-oar", "hn-rt"])
    models = alice_api.get("/api/models/").json()
    assert {m["name"]: m["audit"] for m in models} == {"hn-oar": False, "hn-rt": True}
    assert engine_client.audit_models() == ["hn-rt"]


# --- What the API shows of an audit ------------------------------------------------------


def test_the_audit_of_a_succeeded_audit_job_only(alice, alice_api, alice_dicom_scan):
    job = audit_job_on_disk(alice, alice_dicom_scan["id"])
    response = alice_api.get(f"/api/jobs/{job.id}/")
    shown = response.json()["audit"]
    assert shown == {key: AUDIT_DOCUMENT[key] for key in ("model_name", "structures", "notes")}
    assert "Doe" not in response.content.decode() and "qam_sha256" not in response.content.decode()
    assert [j["audit"] is not None for j in alice_api.get("/api/jobs/").json()] == [True]
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
    assert alice_api.get(f"/api/jobs/{job.id}/").json()["audit"] is None
    segment = audit_job_on_disk(alice, alice_dicom_scan["id"], kind=Job.Kind.SEGMENT)
    assert alice_api.get(f"/api/jobs/{segment.id}/").json()["audit"] is None


def test_another_user_gets_404_on_an_audit_job(alice, alice_api, bob_api, alice_dicom_scan):
    job = audit_job_on_disk(alice, alice_dicom_scan["id"])
    for suffix in ("", "audit.json", "labels.nii.gz"):
        response = bob_api.get(f"/api/jobs/{job.id}/{suffix}")
        assert response.status_code == 404, suffix
        assert "BrainStem" not in response.content.decode()
    assert bob_api.get("/api/jobs/").json() == []
    response = alice_api.get(f"/api/jobs/{job.id}/audit.json")
    assert response.status_code == 200
    assert json.loads(b"".join(response.streaming_content))["structures"][0]["roi_name"] == "BrainStem"


def test_a_delineation_has_no_audit_json(alice_api, alice_job):
    response = alice_api.get(f"/api/jobs/{alice_job['id']}/audit.json")
    assert response.status_code == 404 and "not a contour audit" in response.json()["detail"]


# --- The engine's refusals fail the job with their message (real engine) -----------------


def test_model_without_a_critic_fails_the_job_with_a_clear_message(alice, alice_rtstruct_scan):
    job = Job.objects.create(
        owner=alice,
        scan_id=alice_rtstruct_scan["id"],
        model_name="hn-oar",
        kind=Job.Kind.AUDIT,
        series_key=alice_rtstruct_scan["preflight"]["selected"],
    )
    assert runner.execute_job(job.id) == Job.Status.FAILED
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error == (
        "The contours cannot be audited: model 'hn-oar' has no contour-quality critic; "
        "use a model that ships one (hn-rt)."
    )
    assert "total" in job.timings and job.structures == [] and job.result_dir == ""


@pytest.mark.parametrize(
    "scan_fixture,expected",
    [
        ("alice_dicom_scan", "The contours cannot be audited: the upload holds no structure set (RTSTRUCT) to audit."),
        ("alice_scan", "the audit needs the DICOM series the structure set was drawn on, not a NIfTI file"),
    ],
)
def test_engine_refusals_fail_the_job(request, alice, alice_api, scan_fixture, expected):
    scan = request.getfixturevalue(scan_fixture)
    job = Job.objects.create(owner=alice, scan_id=scan["id"], model_name="hn-oar", kind=Job.Kind.AUDIT)
    assert runner.execute_job(job.id) == Job.Status.FAILED
    shown = alice_api.get(f"/api/jobs/{job.id}/").json()
    assert shown["status"] == "failed" and expected in shown["error"]
    assert shown["audit"] is None and shown["downloads"] == {}


# --- Pages -------------------------------------------------------------------------------


@pytest.fixture
def alice_browser(client, alice):
    client.force_login(alice)
    return client


def audit_select(page: str) -> str:
    start = page.index('<select name="audit_model"')
    return page[start : page.index("</select>", start)]


def test_scan_page_offers_the_audit_only_with_a_structure_set(
    alice_browser, alice_dicom_scan, alice_rtstruct_scan, auditing
):
    plain = alice_browser.get(f"/scans/{alice_dicom_scan['id']}/").content.decode()
    assert "Audit the contours" not in plain and 'id="audit-section"' not in plain
    page = alice_browser.get(f"/scans/{alice_rtstruct_scan['id']}/").content.decode()
    assert 'id="audit-button"' in page and "Audit the contours" in page
    assert "Brainstem, PTV70" in page  # the pre-flight lists the RTSTRUCT's ROIs
    options = audit_select(page)
    assert '<option value="hn-rt">' in options and "hn-oar" not in options
    assert '<option value="hn-oar">' in page  # still offered for a delineation


def test_scan_page_says_a_critic_is_needed_when_no_model_can_audit(alice_browser, alice_rtstruct_scan, fake_engine):
    page = alice_browser.get(f"/scans/{alice_rtstruct_scan['id']}/").content.decode()
    assert 'id="audit-section"' in page and 'id="audit-button"' not in page
    assert rules.AUDIT_NEEDS_CRITIC in page and "hn-rt" in page


def test_scan_page_queues_an_audit(
    alice_browser, alice, alice_rtstruct_scan, auditing, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_browser.post(
            f"/scans/{alice_rtstruct_scan['id']}/", {"model": "hn-oar", "audit_model": "hn-rt", "kind": "audit"}
        )
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/?new={job.id}"
    assert job.kind == "audit" and job.model_name == "hn-rt" and job.owner == alice and job.status == "succeeded"
    assert len(auditing) == 1
    listing = alice_browser.get("/jobs/").content.decode()
    assert "Contour audit" in listing
    viewer = alice_browser.get(f"/jobs/{job.id}/").content.decode()
    assert 'id="audit-table"' in viewer and "does not replace one" in viewer and "Check (quality score)" in viewer


def test_scan_page_refuses_an_audit_of_a_scan_without_structure_set(alice_browser, alice_dicom_scan, auditing):
    response = alice_browser.post(f"/scans/{alice_dicom_scan['id']}/", {"audit_model": "hn-rt", "kind": "audit"})
    assert response.status_code == 200 and "no structure set (RTSTRUCT)" in response.content.decode()
    assert Job.objects.count() == 0


def test_the_viewer_of_a_delineation_has_no_audit_table(alice_browser, alice_job):
    page = alice_browser.get(f"/jobs/{alice_job['id']}/").content.decode()
    assert 'id="audit-table"' not in page
