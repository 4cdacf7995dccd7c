"""A job whose scan is outside its model's domain (engine.infer.domain): succeeded with
warnings, the reason in the API and on the viewer, RTSTRUCT and SEG only after an
acknowledgement that the access log records."""

from __future__ import annotations

import pytest

from webapp.delineation.models import AccessEvent, Job, Scan

pytestmark = pytest.mark.django_db

REASONS = [
    "hn-oar delineates head and neck CT scans; this scan looks outside that domain",
    "the scan covers 40 mm from top to bottom; the head and neck needs at least 230 mm",
]
OUTSIDE = {"in_domain": False, "reasons": REASONS, "structures": {"Brainstem": "not found"}, "signals": {}}


@pytest.fixture
def flagged_job(alice_job):
    Job.objects.filter(pk=alice_job["id"]).update(domain=OUTSIDE)
    return alice_job


def test_api_reports_the_check(alice_api, flagged_job):
    job = alice_api.get(f"/api/jobs/{flagged_job['id']}/").json()
    assert job["status"] == "succeeded" and job["status_label"] == "Succeeded with warnings"
    assert job["outside_domain"] is True and job["domain"]["reasons"] == REASONS


def test_in_domain_job_has_no_warning(alice_api, alice_job):
    Job.objects.filter(pk=alice_job["id"]).update(domain={**OUTSIDE, "in_domain": True, "reasons": []})
    job = alice_api.get(f"/api/jobs/{alice_job['id']}/").json()
    assert job["outside_domain"] is False and job["status_label"] == "Succeeded"
    assert alice_api.get(job["downloads"]["rtstruct"]).status_code == 200


@pytest.mark.parametrize("key, filename", [("rtstruct", "rtstruct.dcm"), ("seg", "seg.dcm")])
def test_dicom_downloads_need_an_acknowledgement(alice_api, flagged_job, key, filename):
    url = flagged_job["downloads"][key]
    refused = alice_api.get(url)
    assert refused.status_code == 409
    assert "covers 40 mm" in refused.json()["detail"] and "acknowledge" in refused.json()["detail"]
    assert not AccessEvent.objects.filter(action=AccessEvent.Action.ACKNOWLEDGE).exists()
    assert alice_api.get(url + "?acknowledge=outside-domain").status_code == 200
    event = AccessEvent.objects.get(action=AccessEvent.Action.ACKNOWLEDGE)
    assert event.filename == filename and str(event.object_id) == flagged_job["id"]
    # The label map is not imported by a planning system: no acknowledgement needed.
    assert alice_api.get(flagged_job["downloads"]["labels"]).status_code == 200


def test_viewer_shows_the_banner(client, alice, flagged_job):
    client.force_login(alice)
    page = client.get(f"/jobs/{flagged_job['id']}/").content.decode()
    assert 'id="domain-warning"' in page and "covers 40 mm from top to bottom" in page
    assert "Brainstem (not found)" in page and 'id="acknowledge-domain"' in page
    assert "Succeeded with warnings" in page


def test_scan_page_names_the_mismatch_before_a_job(client, alice, alice_job):
    """The pre-flight report's headers against each model's domain (hn-oar's card: CT of
    the head and neck, at least 230 mm from top to bottom), shown before anything is queued."""
    scan = Scan.objects.get(pk=alice_job["scan"])
    report = dict(scan.preflight)
    short = {**report["series"][0], "size": [512, 512, 20], "spacing_mm": [0.8, 0.8, 2.0], "axcodes": "LPS"}
    mr = {**short, "key": "1.2.3.4", "modality": "MR", "size": [256, 256, 160]}
    Scan.objects.filter(pk=scan.pk).update(preflight={**report, "series": [short, mr]})
    client.force_login(alice)
    page = client.get(f"/scans/{scan.pk}/").content.decode()
    assert 'id="domain-notes"' in page
    assert "the scan covers 40 mm from top to bottom; the head and neck" in page
    assert "this is a MR series; hn-oar delineates head and neck CT scans only, so the job would be refused" in page


def test_job_lists_say_succeeded_with_warnings(client, alice, flagged_job):
    client.force_login(alice)
    page = client.get("/jobs/").content.decode()
    assert "Succeeded with warnings" in page and "badge succeeded warning" in page
