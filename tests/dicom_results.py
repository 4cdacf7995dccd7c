"""Fixtures and helpers of the tests that send a job's results to a DICOM peer
(``tests/test_dicom_send*.py``, ``test_dicom_stow.py``, ``test_dicom_tls.py``): a
finished job whose RTSTRUCT is real, fast retries, a pynetdicom Storage SCP standing in
for the peer. Registered as a plugin in ``tests/conftest.py``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt

from tests.dicom_peers import case_files
from webapp.delineation import engine_client
from webapp.delineation.dicom import send
from webapp.delineation.dicom.models import DicomPeer, ResultSend
from webapp.delineation.models import Job

_, RTSTRUCT = case_files("pt_104")


@pytest.fixture
def engine_with_rtstruct(fake_engine, monkeypatch):
    """The fake engine, with a real RTSTRUCT (openkbp pt_104's, which references its CT) as its rtstruct.dcm."""
    fake = engine_client.run_segmentation

    def run(input_path, model_name, out_dir, progress=None, series=None):
        result = fake(input_path, model_name, out_dir, progress, series)
        shutil.copyfile(RTSTRUCT, Path(out_dir) / "rtstruct.dcm")
        return result

    monkeypatch.setattr(engine_client, "run_segmentation", run)
    return fake_engine


@pytest.fixture
def fast_retries(settings):
    settings.DICOM_SEND_ATTEMPTS = 3
    settings.DICOM_SEND_RETRY_DELAY_S = 0
    settings.DICOM_NETWORK_TIMEOUT_S = 5


def peer_scp(ae_title: str, port: int, status: int):
    """A pynetdicom Storage SCP standing in for the peer, answering every C-STORE with ``status``."""
    received = []

    def on_store(event):
        received.append(event.dataset.SOPInstanceUID)
        return status

    ae = AE(ae_title=ae_title)
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    return server, received


@pytest.fixture
def succeeded_job(alice, alice_api, engine_with_rtstruct, alice_dicom_scan, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_api.post("/api/jobs/", {"scan": alice_dicom_scan["id"], "model": "hn-oar"}, format="json")
    job = Job.objects.get(pk=response.json()["id"])
    assert job.status == "succeeded"
    return job


def planned(job: Job, port: int) -> ResultSend:
    peer = DicomPeer.objects.create(name="TPS", ae_title="TPS1", host="127.0.0.1", port=port, owner=job.owner,
                                    model_name="hn-oar", send_results=True)  # fmt: skip
    send.plan_sends(job, peer)
    return ResultSend.objects.get(job=job)
