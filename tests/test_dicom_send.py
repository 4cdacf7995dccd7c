"""Rules and result sending (webapp/delineation/dicom/send.py): a peer with a model gets a
job for every complete image series; with ``send_results`` the job's RTSTRUCT goes back to
the peer by C-STORE (dcmtk's storescp, or a pynetdicom SCP, listening as the peer), with
retries and back-off; the send's state is in ``GET /api/jobs/{id}/`` and on the job page."""

from __future__ import annotations

import subprocess

import pydicom
import pytest
from django.test import Client

from tests.dicom_peers import case_files, free_port, need_dcmtk, running_node
from tests.dicom_results import RTSTRUCT, peer_scp, planned
from tests.test_dicom_node_receive import QUIET_S, send_datasets, wait_for
from webapp.delineation import engine_client, runner
from webapp.delineation.dicom import send
from webapp.delineation.dicom.models import DicomPeer, ResultSend
from webapp.delineation.models import Job


@pytest.mark.django_db(transaction=True)
def test_a_peer_with_a_model_gets_a_job_and_its_rtstruct_back(django_user_model, engine_with_rtstruct, tmp_path):
    need_dcmtk()
    alice = django_user_model.objects.create_user("alice")
    peer_port = free_port()
    DicomPeer.objects.create(name="TPS", ae_title="CTSIM1", host="127.0.0.1", port=peer_port, owner=alice,
                             model_name="hn-oar", send_results=True)  # fmt: skip
    inbox = tmp_path / "peer-inbox"
    inbox.mkdir()
    storescp = subprocess.Popen(["storescp", "-aet", "CTSIM1", "-od", str(inbox), str(peer_port)])
    try:
        with running_node(QUIET_S) as node:
            images, _ = case_files("pt_104")
            assert send_datasets(node.port, images) == [0] * len(images)
            sent = wait_for(lambda: ResultSend.objects.exclude(state="queued").first())
            assert sent.state == "sent", sent.message
            assert sent.status == 0 and sent.attempts == 1
    finally:
        storescp.terminate()
        storescp.wait(timeout=30)
    job = Job.objects.get()
    assert (job.owner, job.model_name, job.status) == (alice, "hn-oar", "succeeded") and job.series_key
    assert engine_with_rtstruct[0]["series"] == job.series_key
    (received,) = inbox.iterdir()
    assert pydicom.dcmread(received).SOPInstanceUID == pydicom.dcmread(RTSTRUCT).SOPInstanceUID
    client = Client()
    client.force_login(alice)
    (state,) = client.get(f"/api/jobs/{job.id}/").json()["sends"]
    assert (state["destination"], state["file"], state["state"], state["status"]) == ("TPS", "rtstruct.dcm", "sent", 0)
    page = client.get(f"/jobs/{job.id}/").content.decode()
    assert 'id="sends"' in page and "rtstruct.dcm to TPS" in page and "Sent" in page


@pytest.mark.django_db
def test_a_destination_that_is_down_gets_retries_then_a_failed_send(succeeded_job, fast_retries, alice_api,
                                                                    django_capture_on_commit_callbacks):  # fmt: skip
    record = planned(succeeded_job, free_port())  # nothing listens there
    with django_capture_on_commit_callbacks(execute=True):
        send.job_finished(succeeded_job)
    record.refresh_from_db()
    assert (record.state, record.attempts, record.status) == ("failed", 3, None)
    assert "No association with TPS1 at 127.0.0.1" in record.message and "after 3 attempts" in record.message
    job = alice_api.get(f"/api/jobs/{succeeded_job.id}/").json()
    assert job["status"] == "succeeded" and job["sends"][0]["state"] == "failed"
    assert alice_api.get(job["downloads"]["rtstruct"]).status_code == 200  # nothing lost


@pytest.mark.django_db
def test_a_failure_status_from_the_peer_is_recorded(succeeded_job, fast_retries, django_capture_on_commit_callbacks):
    port = free_port()
    server, received = peer_scp("TPS1", port, 0xA700)
    try:
        record = planned(succeeded_job, port)
        with django_capture_on_commit_callbacks(execute=True):
            send.job_finished(succeeded_job)
    finally:
        server.shutdown()
    record.refresh_from_db()
    assert (record.state, record.status, record.attempts) == ("failed", 0xA700, 3)
    assert "refused the object with status 0xA700" in record.message
    assert len(received) == 3


@pytest.mark.django_db
def test_a_peer_back_up_between_attempts_gets_the_result(succeeded_job, fast_retries, monkeypatch,
                                                         django_capture_on_commit_callbacks):  # fmt: skip
    port = free_port()
    record = planned(succeeded_job, port)
    real_c_store, servers = send.c_store, []

    def c_store(peer, dataset):
        if not servers:  # the first attempt finds the peer down; it is started before the second
            servers.append(None)
            return real_c_store(peer, dataset)
        servers.append(peer_scp("TPS1", port, 0x0000))
        return real_c_store(peer, dataset)

    monkeypatch.setattr(send, "c_store", c_store)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            send.job_finished(succeeded_job)
    finally:
        for server in servers[1:]:
            server[0].shutdown()
    record.refresh_from_db()
    assert (record.state, record.status, record.attempts) == ("sent", 0, 2)


@pytest.mark.django_db
def test_results_to_another_destination_with_the_seg(succeeded_job, fast_retries, django_capture_on_commit_callbacks):
    port = free_port()
    server, received = peer_scp("TPS1", port, 0x0000)
    try:
        owner = succeeded_job.owner
        tps = DicomPeer.objects.create(name="TPS", ae_title="TPS1", host="127.0.0.1", port=port, owner=owner)
        scanner = DicomPeer.objects.create(name="CT", ae_title="CTSIM1", host="127.0.0.1", port=free_port(),
                                           owner=succeeded_job.owner, model_name="hn-oar", send_results=True,
                                           send_seg=True, results_to=tps)  # fmt: skip
        send.plan_sends(succeeded_job, scanner)
        with django_capture_on_commit_callbacks(execute=True):
            send.job_finished(succeeded_job)
    finally:
        server.shutdown()
    sends = {s.filename: s for s in ResultSend.objects.all()}
    assert {s.peer for s in sends.values()} == {tps}
    assert sends["rtstruct.dcm"].state == "sent" and len(received) == 1
    # The fake engine's seg.dcm is not DICOM: refused at once, with why, and never sent.
    assert sends["seg.dcm"].state == "failed" and "not a DICOM file" in sends["seg.dcm"].message


@pytest.mark.django_db
def test_a_damaged_result_is_not_sent(succeeded_job, fast_retries, django_capture_on_commit_callbacks):
    record = planned(succeeded_job, free_port())
    (succeeded_job.result_path / "rtstruct.dcm").write_bytes(b"changed")
    with django_capture_on_commit_callbacks(execute=True):
        send.job_finished(succeeded_job)
    record.refresh_from_db()
    assert record.state == "failed" and "no longer matches" in record.message and record.attempts == 0


@pytest.mark.django_db
def test_a_failed_job_fails_its_sends(
    alice, alice_dicom_scan, monkeypatch, fake_engine, django_capture_on_commit_callbacks
):
    from webapp.delineation import tasks
    from webapp.delineation.models import Scan

    def broken(*args, **kwargs):
        raise engine_client.DelineationError("no usable series")

    monkeypatch.setattr(engine_client, "run_segmentation", broken)
    peer = DicomPeer.objects.create(name="TPS", ae_title="TPS1", host="127.0.0.1", port=104, owner=alice,
                                    model_name="hn-oar", send_results=True)  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        job, _ = tasks.queue_job(alice, Scan.objects.get(pk=alice_dicom_scan["id"]), "hn-oar")
        send.plan_sends(job, peer)
    record = ResultSend.objects.get()
    assert record.state == "failed" and "The job failed" in record.message


def test_back_off_doubles_up_to_the_maximum(settings):
    settings.DICOM_SEND_RETRY_DELAY_S, settings.DICOM_SEND_MAX_DELAY_S = 30, 600
    assert [send.retry_delay(n) for n in range(1, 8)] == [30, 60, 120, 240, 480, 600, 600]


@pytest.mark.django_db
def test_a_bug_while_sending_is_a_failed_attempt_not_a_send_left_queued(
    succeeded_job, fast_retries, monkeypatch, django_capture_on_commit_callbacks
):
    record = planned(succeeded_job, free_port())

    def broken(peer, dataset):
        raise RuntimeError("Patient^Name in a message that must not reach the send's record")

    monkeypatch.setattr(send, "c_store", broken)
    with django_capture_on_commit_callbacks(execute=True):
        send.job_finished(succeeded_job)
    record.refresh_from_db()
    assert (record.state, record.attempts) == ("failed", 3)
    assert "Internal error while sending (RuntimeError)" in record.message and "Patient" not in record.message


@pytest.mark.django_db
def test_a_job_killed_at_its_time_limit_fails_its_sends(alice, alice_dicom_scan, fake_engine):
    from webapp.delineation.models import Scan

    peer = DicomPeer.objects.create(name="TPS", ae_title="TPS1", host="127.0.0.1", port=104, owner=alice,
                                    model_name="hn-oar", send_results=True)  # fmt: skip
    job = Job.objects.create(owner=alice, scan=Scan.objects.get(pk=alice_dicom_scan["id"]), model_name="hn-oar",
                             status="running")  # fmt: skip
    send.plan_sends(job, peer)
    runner.fail_after_time_limit(job.id, 600)
    record = ResultSend.objects.get()
    assert record.state == "failed" and "The job failed" in record.message
