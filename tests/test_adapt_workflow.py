"""The adaptive workflow (issue 5): a propagation job carries a planning scan's contours (an
RTSTRUCT of its upload or a delineation's result) onto a daily scan of the same patient; the
physician keeps, per structure, the propagated or the direct contours and downloads the
RTSTRUCT for the daily scan. The engine's propagation is the contract's fake
(``tests/conftest.py``, ``fake_propagation``); everything around it is real, the final
RTSTRUCT included. Personas: Alice owns the data, Charlie must get 404."""

from __future__ import annotations

import io
import json
import sys
import zipfile
from datetime import timedelta

import numpy as np
import pydicom
import pytest
from django.utils import timezone

from engine.errors import InputError
from tests import factories
from tests.conftest import FAKE_PROPAGATION_REPORT, fake_propagation_masks, get_export
from tests.workflow import content, propagate, rtstruct_masks, rtstruct_uid, upload
from webapp.delineation import engine_client, exports, retention, runner
from webapp.delineation.models import Export, Job, Scan

pytestmark = pytest.mark.django_db


def queued_propagation(alice, planning, daily, **fields) -> Job:
    """A rigid propagation of Alice's ``planning`` RTSTRUCT onto ``daily``, created as the
    API would queue it (``fields`` change it), for ``runner.execute_job`` to run."""
    fields = {"contours_rtstruct": rtstruct_uid(planning), "model_name": "rigid", **fields}
    return Job.objects.create(
        owner=alice, scan_id=daily["id"], planning_scan_id=planning["id"], kind=Job.Kind.PROPAGATE, **fields
    )


# --- Running a propagation ---------------------------------------------------------------


def test_a_propagation_of_an_uploaded_rtstruct_runs(alice_api, alice_propagation, planning, daily, fake_propagation):
    (call,) = fake_propagation
    stored = Job.objects.get(pk=alice_propagation["id"])
    assert call["fixed"] == Scan.objects.get(pk=daily["id"]).engine_input  # daily: fixed
    assert call["moving"] == Scan.objects.get(pk=planning["id"]).engine_input  # planning: moving
    assert call["rois"] == ["Brainstem", "Mandible"] and call["model"] == "dual-head"
    assert not call["contours"].exists()  # the copy of the planning RTSTRUCT is not kept
    job = alice_propagation
    assert job["kind"] == "propagate" and job["scan"] == daily["id"] and job["planning_scan"] == planning["id"]
    assert job["contours_rtstruct"] == rtstruct_uid(planning) and job["contours_job"] is None
    assert job["input_kind"] == "dicom" and job["timings"]["register"] == 0.5 and "total" in job["timings"]
    assert [s["name"] for s in job["structures"]] == ["Brainstem", "Mandible"]
    shown = job["propagation"]
    assert shown["folding_percent"] == 0.2 and shown["model"] == "dual-head"
    brainstem, mandible = shown["structures"]
    assert brainstem["dice_vs_direct"] == 0.75 and brainstem["warning"].startswith("The propagated and the direct")
    assert mandible["folding_percent_inside"] == 1.5 and "folds" in mandible["warning"]
    assert brainstem["kept"] == mandible["kept"] == "propagated" and brainstem["direct"] and mandible["direct"]
    # Outputs: recorded with checksums; the viewer has the daily CT and both label maps.
    assert {"ddf.nii.gz", "labels.nii.gz", "direct_labels.nii.gz", "report.json", "image.nii.gz"} <= set(
        stored.checksums
    )
    assert "viewer/direct.npy" in stored.checksums and "structures.zip" in stored.checksums
    downloads = job["downloads"]
    assert downloads["final_rtstruct"] == f"/api/jobs/{job['id']}/final_rtstruct.dcm"
    report = alice_api.get(downloads["propagation"])
    assert report.status_code == 200 and json.loads(content(report))["structures"][0]["name"] == "Brainstem"
    assert alice_api.get(downloads["ddf"]).status_code == 200
    piece = alice_api.get(f"/api/jobs/{job['id']}/slice/?plane=axial&index=3").json()
    assert piece["direct_present"] == [1, 2] and piece["labels_present"] == [1, 2]


def test_a_delineation_of_the_planning_scan_can_be_the_contours(
    alice_api, planning, daily, fake_engine, fake_propagation, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        segment = alice_api.post("/api/jobs/", {"scan": planning["id"], "model": "hn-oar"}, format="json").json()
    response = propagate(
        alice_api, daily["id"], planning["id"], django_capture_on_commit_callbacks, contours_job=segment["id"]
    )
    assert response.status_code == 201, response.content
    assert alice_api.get(f"/api/jobs/{response.json()['id']}/").json()["status"] == "succeeded"
    (call,) = fake_propagation
    assert call["contours"] == Job.objects.get(pk=segment["id"]).result_path


def test_the_same_propagation_sent_twice_is_one_job_another_source_is_another(
    alice_api, planning, daily, fake_engine, fake_propagation, django_capture_on_commit_callbacks
):
    """Queued but not run (no on-commit execution): a second identical POST returns the first
    job with 200; the same scans with other contours (a delineation) are a new job."""
    first = propagate(alice_api, daily["id"], planning["id"], contours_rtstruct=rtstruct_uid(planning))
    again = propagate(alice_api, daily["id"], planning["id"], contours_rtstruct=rtstruct_uid(planning))
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    with django_capture_on_commit_callbacks(execute=True):
        segment = alice_api.post("/api/jobs/", {"scan": planning["id"], "model": "hn-oar"}, format="json").json()
    other = propagate(alice_api, daily["id"], planning["id"], contours_job=segment["id"])
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    assert Job.objects.filter(kind=Job.Kind.PROPAGATE).count() == 2


def test_a_classical_registration_has_no_direct_contours(
    alice_api, planning, daily, fake_propagation, django_capture_on_commit_callbacks
):
    response = propagate(
        alice_api,
        daily["id"],
        planning["id"],
        django_capture_on_commit_callbacks,
        contours_rtstruct=rtstruct_uid(planning),
        model="rigid",
    )
    job = alice_api.get(f"/api/jobs/{response.json()['id']}/").json()
    assert job["status"] == "succeeded"
    assert [s["direct"] for s in job["propagation"]["structures"]] == [False, False]
    response = alice_api.post(f"/api/jobs/{job['id']}/choices/", {"choices": {"Brainstem": "direct"}}, format="json")
    assert response.status_code == 400 and "No direct segmentation" in response.json()["choices"][0]
    assert "direct_present" not in alice_api.get(f"/api/jobs/{job['id']}/slice/").json()


# --- Validation: 400 with a message ------------------------------------------------------


def test_scans_of_different_patients_are_refused(alice_api, planning, tmp_path, fake_propagation):
    other = upload(alice_api, factories.dicom_zip_bytes(tmp_path / "other", patient_id="PHANTOM2"), "other.zip")
    response = propagate(alice_api, other["id"], planning["id"], contours_rtstruct=rtstruct_uid(planning))
    assert response.status_code == 400
    assert "belong to different patients" in response.json()["planning_scan"][0]
    assert Job.objects.count() == 0


def test_a_scan_without_a_patient_is_refused(alice_api, planning, alice_scan, fake_propagation):
    response = propagate(alice_api, alice_scan["id"], planning["id"], contours_rtstruct=rtstruct_uid(planning))
    assert response.status_code == 400
    assert "The daily scan has no patient: enter its Patient ID" in response.json()["planning_scan"][0]


def test_the_same_scan_twice_is_refused(alice_api, planning, fake_propagation):
    response = propagate(alice_api, planning["id"], planning["id"], contours_rtstruct=rtstruct_uid(planning))
    assert "two different scans" in response.json()["planning_scan"][0]


@pytest.mark.parametrize(
    "fields,field,message",
    [
        ({}, "contours_rtstruct", "Choose the planning contours"),
        ({"contours_rtstruct": "1.2.3.4"}, "contours_rtstruct", "no structure set (RTSTRUCT) with that UID"),
        ({"planning_scan": None, "contours_rtstruct": "1.2.3"}, "planning_scan", "Choose the planning scan"),
    ],
)
def test_missing_contours_or_planning_scan_are_refused(
    alice_api, planning, daily, fake_propagation, fields, field, message
):
    payload = {"scan": daily["id"], "planning_scan": planning["id"], "kind": "propagate", "model": "rigid", **fields}
    response = alice_api.post("/api/jobs/", {k: v for k, v in payload.items() if v is not None}, format="json")
    assert response.status_code == 400
    assert message in response.json()[field][0]
    assert Job.objects.count() == 0


def test_a_planning_upload_without_rtstruct_says_to_delineate_it(alice_api, daily, tmp_path, fake_propagation):
    plain = upload(alice_api, factories.dicom_zip_bytes(tmp_path / "plain"), "plain.zip")
    response = propagate(alice_api, daily["id"], plain["id"], contours_rtstruct="1.2.3")
    assert "choose a delineation of the planning scan instead" in response.json()["contours_rtstruct"][0]


def test_both_contour_sources_at_once_are_refused(alice_api, planning, daily, alice_job, fake_propagation):
    response = propagate(
        alice_api, daily["id"], planning["id"], contours_rtstruct=rtstruct_uid(planning), contours_job=alice_job["id"]
    )
    assert "not both" in response.json()["contours_rtstruct"][0]


def test_a_delineation_of_another_scan_is_refused(alice_api, planning, daily, alice_job, fake_propagation):
    response = propagate(alice_api, daily["id"], planning["id"], contours_job=alice_job["id"])
    assert "of another scan, not of the planning scan" in response.json()["contours_job"][0]


def test_a_failed_delineation_is_refused(alice, alice_api, planning, daily, fake_propagation):
    failed = Job.objects.create(owner=alice, scan_id=planning["id"], model_name="hn-oar", status=Job.Status.FAILED)
    response = propagate(alice_api, daily["id"], planning["id"], contours_job=str(failed.id))
    assert "has no result (status: failed)" in response.json()["contours_job"][0]


def test_unknown_method_lists_the_propagation_methods(alice_api, planning, daily, fake_propagation):
    response = propagate(
        alice_api, daily["id"], planning["id"], contours_rtstruct=rtstruct_uid(planning), model="hn-oar"
    )
    (message,) = response.json()["model"]
    assert "Unknown model 'hn-oar'" in message and "rigid, elastix-bspline, dual-head" in message


def test_without_a_propagation_method_none_is_offered(alice_api, planning, daily, monkeypatch):
    monkeypatch.setattr(engine_client, "propagation_models", lambda: [])
    assert alice_api.get("/api/propagation-models/").json() == {"models": []}
    response = propagate(alice_api, daily["id"], planning["id"], contours_rtstruct=rtstruct_uid(planning))
    assert "no contour propagation method is installed" in response.json()["model"][0]


def test_charlies_scans_and_jobs_cannot_be_used(
    alice_api, charlie_api, planning, daily, alice_job, tmp_path, fake_propagation
):
    charlies = upload(charlie_api, factories.dicom_zip_bytes(tmp_path / "c"), "c.zip")  # the same Patient ID
    response = propagate(charlie_api, charlies["id"], planning["id"], contours_rtstruct=rtstruct_uid(planning))
    assert response.status_code == 400 and "No scan with id" in response.json()["planning_scan"][0]
    response = propagate(charlie_api, charlies["id"], charlies["id"], contours_job=alice_job["id"])
    assert "No job with id" in response.json()["contours_job"][0]


def test_propagation_fields_belong_to_propagations_only(alice_api, planning, fake_engine):
    response = alice_api.post(
        "/api/jobs/", {"scan": planning["id"], "model": "hn-oar", "planning_scan": planning["id"]}, format="json"
    )
    assert response.status_code == 400 and "Only a propagation" in response.json()["planning_scan"][0]


# --- The engine or the inputs fail at run time: the job fails with a message ---------------


def test_a_deleted_planning_scan_fails_the_queued_job(alice, planning, daily, fake_propagation):
    job = queued_propagation(alice, planning, daily)
    Scan.objects.filter(pk=planning["id"]).delete()
    assert runner.execute_job(job.id) == Job.Status.FAILED
    job.refresh_from_db()
    assert job.error == "The planning scan of this propagation was deleted; start a new one."
    assert fake_propagation == []


def test_damaged_contours_of_a_delineation_fail_the_job(
    alice, planning, daily, fake_engine, fake_propagation, alice_api, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        segment = alice_api.post("/api/jobs/", {"scan": planning["id"], "model": "hn-oar"}, format="json").json()
    source = Job.objects.get(pk=segment["id"])
    (source.result_path / "labels.nii.gz").write_bytes(b"not the labels the job wrote")
    job = queued_propagation(alice, planning, daily, contours_rtstruct="", contours_job=source)
    assert runner.execute_job(job.id) == Job.Status.FAILED
    job.refresh_from_db()
    assert "is damaged" in job.error and fake_propagation == []


def test_the_engines_refusal_fails_the_job_with_its_message(alice, planning, daily, monkeypatch, fake_propagation):
    def refuse(*args, **kwargs):
        raise InputError("the contours hold no structure inside the planning image")

    monkeypatch.setattr(sys.modules["engine.infer.propagate"], "propagate_files", refuse)
    job = queued_propagation(alice, planning, daily)
    assert runner.execute_job(job.id) == Job.Status.FAILED
    job.refresh_from_db()
    assert job.error == "The contours could not be propagated: the contours hold no structure inside the planning image"
    assert not job.output_dir.with_name(f"{job.id}.inputs").exists()


def test_a_bug_in_the_engine_is_an_internal_error_not_a_refusal(alice, planning, daily, monkeypatch, fake_propagation):
    def broken(*args, **kwargs):
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(sys.modules["engine.infer.propagate"], "propagate_files", broken)
    job = queued_propagation(alice, planning, daily)
    with pytest.raises(runner.JobFailed):
        runner.execute_job(job.id)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert job.error.startswith("Internal error during ") and "could not be propagated" not in job.error


def test_a_running_propagation_keeps_its_planning_scan(alice, alice_api, planning, daily):
    queued_propagation(alice, planning, daily, status=Job.Status.RUNNING)
    response = alice_api.delete(f"/api/scans/{planning['id']}/")
    assert response.status_code == 409 and "still running" in response.json()["detail"]
    assert retention.purge(0, now=timezone.now() + timedelta(days=1)).skipped == 2  # neither scan is purged
    assert Scan.objects.count() == 2


# --- Choices and the RTSTRUCT for the daily scan -----------------------------------------


def test_the_kept_contours_are_in_the_downloaded_rtstruct(
    alice_api, alice_propagation, daily, django_capture_on_commit_callbacks
):
    url = f"/api/jobs/{alice_propagation['id']}/"
    with django_capture_on_commit_callbacks(execute=True):  # the worker writes the RTSTRUCT then
        response = alice_api.post(f"{url}choices/", {"choices": {"Brainstem": "direct"}}, format="json")
    assert response.status_code == 200, response.content
    job = response.json()
    assert job["choices"] == {"Brainstem": "direct"}
    assert [s["kept"] for s in job["propagation"]["structures"]] == ["direct", "propagated"]
    assert [(e["file"], e["state"]) for e in job["exports"]] == [("final/rtstruct.dcm", "queued")]
    download = alice_api.get(job["downloads"]["final_rtstruct"])
    assert download.status_code == 200 and download["Content-Type"] == "application/dicom"
    data = content(download)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.Modality == "RTSTRUCT" and [r.ROIName for r in ds.StructureSetROISequence] == ["Brainstem", "Mandible"]
    assert "direct segmentation of the daily scan" in ds.StructureSetROISequence[0].ROIDescription
    assert "propagated from the planning contours" in ds.StructureSetROISequence[1].ROIDescription
    with zipfile.ZipFile(Scan.objects.get(pk=daily["id"]).engine_input) as archive:
        daily_slice = pydicom.dcmread(io.BytesIO(archive.read("CT/IM0000.dcm")))
    referenced = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == daily_slice.SeriesInstanceUID
    masks = rtstruct_masks(data, daily["id"])
    propagated, direct = fake_propagation_masks(masks["Brainstem"].shape)
    np.testing.assert_array_equal(masks["Brainstem"], direct == 1)
    np.testing.assert_array_equal(masks["Mandible"], propagated == 2)
    assert not np.array_equal(masks["Brainstem"], propagated == 1)
    # Choices add up; switching back gives the propagated Brainstem again.
    job = alice_api.post(f"{url}choices/", {"choices": {"Mandible": "direct"}}, format="json").json()
    assert job["choices"] == {"Brainstem": "direct", "Mandible": "direct"}
    job = alice_api.post(f"{url}choices/", {"choices": {"Brainstem": "propagated"}}, format="json").json()
    waiting = alice_api.get(job["downloads"]["final_rtstruct"])  # queued after the last change
    assert waiting.status_code == 202 and waiting.json()["export"]["state"] == "queued"
    exports.run(Export.objects.get(job_id=job["id"], state="queued").pk)  # what the worker does
    masks = rtstruct_masks(content(alice_api.get(job["downloads"]["final_rtstruct"])), daily["id"])
    np.testing.assert_array_equal(masks["Brainstem"], propagated == 1)
    stored = Job.objects.get(pk=job["id"])
    assert {"final/rtstruct.dcm", "final/labels.nii.gz", "final/choices.json"} <= set(stored.checksums)
    assert json.loads((stored.result_path / "final" / "choices.json").read_text()) == {
        "Brainstem": "propagated",
        "Mandible": "direct",
    }


def test_without_choices_the_download_holds_the_propagated_contours(
    alice_api, alice_propagation, daily, django_capture_on_commit_callbacks
):
    download = get_export(
        alice_api, alice_propagation["downloads"]["final_rtstruct"], django_capture_on_commit_callbacks
    )
    assert download.status_code == 200
    masks = rtstruct_masks(content(download), daily["id"])
    propagated, _ = fake_propagation_masks(masks["Brainstem"].shape)
    np.testing.assert_array_equal(masks["Brainstem"], propagated == 1)
    assert "final/rtstruct.dcm" in Job.objects.get(pk=alice_propagation["id"]).checksums


def test_a_tampered_final_rtstruct_is_not_served(alice_api, alice_propagation, django_capture_on_commit_callbacks):
    url = alice_propagation["downloads"]["final_rtstruct"]
    assert get_export(alice_api, url, django_capture_on_commit_callbacks).status_code == 200
    stored = Job.objects.get(pk=alice_propagation["id"])
    (stored.result_path / "final" / "rtstruct.dcm").write_bytes(b"\0" * 128 + b"DICM other")
    response = alice_api.get(url)
    assert response.status_code == 409 and "damaged" in response.json()["detail"]


@pytest.mark.parametrize(
    "choices,message",
    [
        ({"Parotid_L": "direct"}, "Not a structure of this propagation: Parotid_L"),
        ({"Brainstem": "both"}, "is not a valid choice"),
    ],
)
def test_bad_choices_are_refused(alice_api, alice_propagation, choices, message):
    response = alice_api.post(f"/api/jobs/{alice_propagation['id']}/choices/", {"choices": choices}, format="json")
    assert response.status_code == 400 and message in json.dumps(response.json())
    assert Job.objects.get(pk=alice_propagation["id"]).choices == {}


def test_a_delineation_has_no_choices_nor_final_rtstruct(alice_api, alice_job):
    response = alice_api.post(f"/api/jobs/{alice_job['id']}/choices/", {"choices": {}}, format="json")
    assert response.status_code == 404 and "Only a contour propagation" in response.json()["detail"]
    assert alice_api.get(f"/api/jobs/{alice_job['id']}/final_rtstruct.dcm").status_code == 404
    assert (
        "not a contour propagation" in alice_api.get(f"/api/jobs/{alice_job['id']}/propagation.json").json()["detail"]
    )
    assert alice_job["propagation"] is None and alice_job["downloads"]["final_rtstruct"] is None


def test_charlie_gets_404_on_alices_propagation(
    alice_api, charlie_api, alice_propagation, django_capture_on_commit_callbacks
):
    base = f"/api/jobs/{alice_propagation['id']}/"
    responses = [
        charlie_api.get(f"{base}{suffix}")
        for suffix in ("", "propagation.json", "ddf.nii.gz", "final_rtstruct.dcm", "slice/?plane=axial")
    ]
    responses.append(charlie_api.post(f"{base}choices/", {"choices": {"Brainstem": "direct"}}, format="json"))
    for response in responses:
        assert response.status_code == 404, response.request["PATH_INFO"]
        assert "Brainstem" not in response.content.decode()
    assert Job.objects.get(pk=alice_propagation["id"]).choices == {}
    assert charlie_api.get("/api/jobs/").json() == []
    assert get_export(alice_api, f"{base}final_rtstruct.dcm", django_capture_on_commit_callbacks).status_code == 200


# --- Pages -------------------------------------------------------------------------------


@pytest.fixture
def alice_browser(client, alice):
    client.force_login(alice)
    return client


def test_the_patient_page_queues_a_propagation(
    alice_browser, alice, planning, daily, fake_propagation, django_capture_on_commit_callbacks
):
    patient = planning["patient"]["id"]
    page = alice_browser.get(f"/patients/{patient}/").content.decode()
    source = f"rtstruct:{planning['id']}:{rtstruct_uid(planning)}"
    assert 'id="adapt-form"' in page and f'value="{source}"' in page and "RTSTRUCT (Brainstem, Mandible)" in page
    assert '<option value="dual-head"' in page and f'value="{daily["id"]}"' in page
    assert '<option value="elastix-bspline" selected>elastix-bspline (recommended)</option>' in page
    assert '<option value="rigid" >rigid</option>' in page  # only the recommended one is preselected
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_browser.post(
            f"/patients/{patient}/", {"contours": source, "daily_scan": daily["id"], "model": "dual-head"}
        )
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/?new={job.id}"
    assert (job.kind, job.owner, job.status, str(job.planning_scan_id)) == (
        "propagate",
        alice,
        "succeeded",
        planning["id"],
    )
    assert "Contour propagation" in alice_browser.get("/jobs/").content.decode()
    assert "View and choose" in alice_browser.get(f"/patients/{patient}/").content.decode()


def test_the_patient_page_says_why_a_propagation_is_refused(alice_browser, planning, daily, fake_propagation):
    response = alice_browser.post(
        f"/patients/{planning['patient']['id']}/",
        {
            "contours": f"rtstruct:{planning['id']}:{rtstruct_uid(planning)}",
            "daily_scan": planning["id"],
            "model": "rigid",
        },
    )
    assert response.status_code == 200 and "two different scans" in response.content.decode()
    assert Job.objects.count() == 0


def test_the_viewer_of_a_propagation(alice_browser, alice_propagation):
    page = alice_browser.get(f"/jobs/{alice_propagation['id']}/").content.decode()
    assert 'id="propagation-table"' in page and 'id="direct-toggle"' in page and 'id="save-choices"' in page
    assert f"/api/jobs/{alice_propagation['id']}/choices" in page
    assert f"/api/jobs/{alice_propagation['id']}/final_rtstruct.dcm" in page
    assert "propagated from" in page and 'id="audit-table"' not in page


def test_charlie_gets_404_on_the_viewer_of_alices_propagation(client, charlie, alice_propagation):
    client.force_login(charlie)
    assert client.get(f"/jobs/{alice_propagation['id']}/").status_code == 404


def test_the_report_fields_shown_are_the_contracts(alice_propagation):
    assert set(alice_propagation["propagation"]) == {"model", "structures", "folding_percent", "notes"}
    first = {k: v for k, v in alice_propagation["propagation"]["structures"][0].items() if k not in ("kept", "direct")}
    assert first == FAKE_PROPAGATION_REPORT["structures"][0]
