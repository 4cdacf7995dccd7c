"""Results sent by DICOMweb STOW-RS (dicomweb-client) to a peer's ``stow_url``: into Orthanc's
DICOMweb plugin (Orthanc started by the test on free loopback ports), and to a server that
is down (retries, then a failed send with its message)."""

from __future__ import annotations

import io

import pydicom
import pytest
import requests

from tests.dicom_peers import free_port
from tests.dicom_results import RTSTRUCT
from tests.orthanc import need_orthanc, start_orthanc, stop_orthanc
from webapp.delineation.dicom import send
from webapp.delineation.dicom.models import DicomPeer, ResultSend

pytestmark = pytest.mark.django_db


@pytest.fixture
def orthanc(tmp_path):
    need_orthanc()
    pacs = start_orthanc(tmp_path / "orthanc", {})
    yield pacs
    stop_orthanc(pacs)


def stow_peer(job, url: str) -> ResultSend:
    peer = DicomPeer.objects.create(name="ARCHIVE", ae_title="ARCHIVE", host="127.0.0.1", port=104, owner=job.owner,
                                    model_name="hn-oar", send_results=True, stow_url=url)  # fmt: skip
    send.plan_sends(job, peer)
    return ResultSend.objects.get(job=job)


def test_stow_rs_into_orthancs_dicomweb(
    orthanc,
    succeeded_job,
    alice_api,
    django_capture_on_commit_callbacks,
):
    record = stow_peer(succeeded_job, f"{orthanc.url}/dicom-web")
    with django_capture_on_commit_callbacks(execute=True):
        send.job_finished(succeeded_job)
    record.refresh_from_db()
    assert (record.state, record.status, record.attempts) == ("sent", 0, 1), record.message
    (found,) = orthanc.find("Instance", {"Modality": "RTSTRUCT"})
    stored = pydicom.dcmread(io.BytesIO(requests.get(f"{orthanc.url}/instances/{found}/file", timeout=60).content))
    assert stored.SOPInstanceUID == pydicom.dcmread(RTSTRUCT).SOPInstanceUID
    assert alice_api.get(f"/api/jobs/{succeeded_job.id}/").json()["sends"][0]["state"] == "sent"


def test_a_dicomweb_server_that_is_down_gets_retries_then_a_failed_send(
    succeeded_job,
    fast_retries,
    django_capture_on_commit_callbacks,
):
    record = stow_peer(succeeded_job, f"http://127.0.0.1:{free_port()}/dicom-web")
    with django_capture_on_commit_callbacks(execute=True):
        send.job_finished(succeeded_job)
    record.refresh_from_db()
    assert (record.state, record.attempts) == ("failed", 3)
    assert "No answer from the DICOMweb server" in record.message and "after 3 attempts" in record.message


def test_an_http_error_is_a_failed_attempt(
    orthanc,
    succeeded_job,
    fast_retries,
    django_capture_on_commit_callbacks,
):
    record = stow_peer(succeeded_job, f"{orthanc.url}/no-such-root")
    with django_capture_on_commit_callbacks(execute=True):
        send.job_finished(succeeded_job)
    record.refresh_from_db()
    assert record.state == "failed" and "answered HTTP 404" in record.message
    assert orthanc.find("Instance", {"Modality": "RTSTRUCT"}) == []


def test_dicom_peer_add_takes_a_stow_url(alice, fake_engine):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    args = ["ARCHIVE", "--ae-title", "ARCH", "--host", "127.0.0.1", "--port", "104", "--owner", "alice"]
    args += ["--model", "hn-oar", "--send-results", "--stow-url", "https://pacs.example/dicom-web"]
    call_command("dicom_peer", "add", *args, stdout=out)
    assert "RTSTRUCT sent by STOW-RS to https://pacs.example/dicom-web" in out.getvalue()
    assert DicomPeer.objects.get().stow_url == "https://pacs.example/dicom-web"
