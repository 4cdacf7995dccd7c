"""The viewer's "Send to" button and ``POST /api/jobs/{id}/send/``: the owner of a scan sends a
finished job's RTSTRUCT to one of their DICOM destinations (a pynetdicom SCP stands in for
it); others cannot (404, or 403 for a team member the scan is shared with); recorded."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.dicom_peers import free_port
from tests.dicom_results import peer_scp
from webapp.delineation.dicom.models import DicomPeer, ResultSend
from webapp.delineation.models import AccessEvent, Team

pytestmark = pytest.mark.django_db


@pytest.fixture
def destination(alice):
    port = free_port()
    server, received = peer_scp("TPS1", port, 0x0000)
    peer = DicomPeer.objects.create(name="TPS", ae_title="TPS1", host="127.0.0.1", port=port, owner=alice)
    yield peer, received
    server.shutdown()


def test_the_owner_sends_the_rtstruct_to_a_destination(succeeded_job, destination, alice_api,
                                                       django_capture_on_commit_callbacks):  # fmt: skip
    peer, received = destination
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_api.post(f"/api/jobs/{succeeded_job.id}/send/", {"destination": "TPS"}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["destination"] == "TPS"
    (state,) = alice_api.get(f"/api/jobs/{succeeded_job.id}/").json()["sends"]
    assert (state["state"], state["status"], state["file"]) == ("sent", 0, "rtstruct.dcm")
    assert len(received) == 1
    event = AccessEvent.objects.get(action="send")
    assert (event.object_id, event.filename, event.username) == (succeeded_job.id, "rtstruct.dcm", "alice")


def test_unknown_or_anothers_destination_is_refused(succeeded_job, destination, alice_api, bob):
    DicomPeer.objects.create(name="BOBS_TPS", ae_title="BOB1", host="127.0.0.1", port=104, owner=bob)
    for name in ("NOWHERE", "BOBS_TPS"):
        response = alice_api.post(f"/api/jobs/{succeeded_job.id}/send/", {"destination": name}, format="json")
        assert response.status_code == 400
        detail = response.json()["detail"]
        assert f"no destination named {name!r}" in detail and "Your destinations: TPS." in detail
    assert not ResultSend.objects.exists()


def test_others_get_404_and_a_team_member_403(succeeded_job, destination, bob, bob_api, charlie_api):
    url = f"/api/jobs/{succeeded_job.id}/send/"
    assert charlie_api.post(url, {"destination": "TPS"}, format="json").status_code == 404
    team = Team.objects.create(name="H&N")
    team.members.add(bob, succeeded_job.owner)
    succeeded_job.scan.shared_with.add(team)
    response = bob_api.post(url, {"destination": "TPS"}, format="json")
    assert response.status_code == 403 and "Only the owner" in response.json()["detail"]
    assert not ResultSend.objects.exists()


def test_a_job_without_a_result_cannot_be_sent(succeeded_job, destination, alice_api):
    type(succeeded_job).objects.filter(pk=succeeded_job.pk).update(status="failed", checksums={})
    response = alice_api.post(f"/api/jobs/{succeeded_job.id}/send/", {"destination": "TPS"}, format="json")
    assert response.status_code == 409


def test_the_send_to_button(
    succeeded_job,
    destination,
    alice,
    charlie,
    django_capture_on_commit_callbacks,
):
    client = Client()
    client.force_login(alice)
    page = client.get(f"/jobs/{succeeded_job.id}/").content.decode()
    assert 'id="send-form"' in page and '<option value="TPS">TPS (TPS1)</option>' in page
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/jobs/{succeeded_job.id}/send/", {"destination": "TPS"})
    assert response.status_code == 302
    assert ResultSend.objects.get().state == "sent"
    page = client.get(f"/jobs/{succeeded_job.id}/").content.decode()
    assert "rtstruct.dcm to TPS" in page and "queued to be sent to TPS" in page
    refused = client.post(f"/jobs/{succeeded_job.id}/send/", {"destination": "NOWHERE"})
    assert refused.status_code == 400 and "no destination named" in refused.content.decode()
    client.force_login(charlie)
    assert client.post(f"/jobs/{succeeded_job.id}/send/", {"destination": "TPS"}).status_code == 404


OUTSIDE = {"in_domain": False, "reasons": ["the scan covers 40 mm from top to bottom"], "signals": {}}


def test_a_job_outside_its_domain_is_sent_only_once_acknowledged(succeeded_job, destination, alice_api,
                                                                 django_capture_on_commit_callbacks):  # fmt: skip
    from webapp.delineation.models import Job

    Job.objects.filter(pk=succeeded_job.pk).update(domain=OUTSIDE)
    peer, received = destination
    url = f"/api/jobs/{succeeded_job.id}/send/"
    refused = alice_api.post(url, {"destination": "TPS"}, format="json")
    assert refused.status_code == 409 and "covers 40 mm" in refused.json()["detail"]
    assert not ResultSend.objects.exists() and not received
    with django_capture_on_commit_callbacks(execute=True):
        sent = alice_api.post(url + "?acknowledge=outside-domain", {"destination": "TPS"}, format="json")
    assert sent.status_code == 202, sent.content
    assert len(received) == 1
    assert AccessEvent.objects.filter(action="acknowledge", filename="rtstruct.dcm").count() == 1


def test_the_send_to_form_asks_for_the_acknowledgement(succeeded_job, destination, alice):
    from webapp.delineation.models import Job

    Job.objects.filter(pk=succeeded_job.pk).update(domain=OUTSIDE)
    client = Client()
    client.force_login(alice)
    assert 'id="acknowledge-send"' in client.get(f"/jobs/{succeeded_job.id}/").content.decode()
    refused = client.post(f"/jobs/{succeeded_job.id}/send/", {"destination": "TPS"})
    assert refused.status_code == 409 and "covers 40 mm" in refused.content.decode()
    assert not ResultSend.objects.exists()


def test_a_peers_rule_holds_back_the_results_of_a_job_outside_its_domain(succeeded_job):
    from tests.test_dicom_send import planned
    from webapp.delineation.dicom import send
    from webapp.delineation.models import Job

    record = planned(succeeded_job, free_port())  # nothing listens there: nothing may be sent
    Job.objects.filter(pk=succeeded_job.pk).update(domain=OUTSIDE)
    succeeded_job.refresh_from_db()
    send.job_finished(succeeded_job)
    record.refresh_from_db()
    assert record.state == "failed" and "covers 40 mm" in record.message and "Send to" in record.message
    assert record.attempts == 0
