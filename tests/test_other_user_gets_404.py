"""Everything of Alice is invisible to Bob: 404 (never 403, never data)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_scan_detail_and_delete(bob_api, alice_api, alice_scan):
    for response in (
        bob_api.get(f"/api/scans/{alice_scan['id']}/"),
        bob_api.delete(f"/api/scans/{alice_scan['id']}/"),
    ):
        assert response.status_code == 404
        assert alice_scan["name"] not in response.content.decode()
    assert alice_api.get(f"/api/scans/{alice_scan['id']}/").status_code == 200


def test_scan_list(bob_api, alice_api, alice_scan):
    assert bob_api.get("/api/scans/").json() == []
    assert [s["id"] for s in alice_api.get("/api/scans/").json()] == [alice_scan["id"]]


@pytest.mark.parametrize(
    "suffix", ["", "labels.nii.gz", "rtstruct.dcm", "structures.zip", "slice/?plane=axial&index=0"]
)
def test_job_endpoints(bob_api, alice_api, alice_job, suffix):
    url = f"/api/jobs/{alice_job['id']}/{suffix}"
    response = bob_api.get(url)
    assert response.status_code == 404
    assert alice_job["scan_name"] not in response.content.decode()
    assert alice_api.get(url).status_code == 200


def test_job_list(bob_api, alice_job):
    assert bob_api.get("/api/jobs/").json() == []
    assert bob_api.get(f"/api/jobs/?scan={alice_job['scan']}").json() == []


def test_viewer_page(client, bob, alice_job):
    client.force_login(bob)
    assert client.get(f"/jobs/{alice_job['id']}/").status_code == 404


def test_unknown_ids_are_404(alice_api):
    assert alice_api.get("/api/jobs/not-a-uuid/").status_code == 404
    assert alice_api.get("/api/scans/00000000-0000-0000-0000-000000000000/").status_code == 404
