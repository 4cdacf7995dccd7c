"""DELETE /api/scans/{id}/ removes the scan, its jobs and every file of it."""

from __future__ import annotations

import pytest

from webapp.delineation.models import Job, Scan

pytestmark = pytest.mark.django_db


def test_delete_removes_files(alice_api, alice_job, media_root, django_capture_on_commit_callbacks):
    folder = media_root / "scans" / alice_job["scan"]
    assert (folder / "original").exists() and (folder / "jobs" / alice_job["id"]).exists()
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_api.delete(f"/api/scans/{alice_job['scan']}/")
    assert response.status_code == 204
    assert not folder.exists()
    assert not Scan.objects.exists() and not Job.objects.exists()


def test_no_delete_while_a_job_runs(alice_api, alice_job, media_root):
    Job.objects.filter(pk=alice_job["id"]).update(status="running")
    response = alice_api.delete(f"/api/scans/{alice_job['scan']}/")
    assert response.status_code == 409
    assert "still running" in response.json()["detail"]
    assert (media_root / "scans" / alice_job["scan"]).exists()
