"""The node against a real PACS: Orthanc, started by the test with its own configuration on
free loopback ports, sends an openkbp CT to the node (REST ``/modalities/{id}/store``); the
peer's rule queues the job, and the node sends the RTSTRUCT back to Orthanc, where the test
finds it over REST and checks that it references the CT's series and SOP instances.

The job runs in-process on the fake engine, whose ``rtstruct.dcm`` is openkbp's own
RTSTRUCT of that CT: the point here is the DICOM traffic, not the delineation (the real
worker and engine have their own end-to-end tests)."""

from __future__ import annotations

import pydicom
import pytest
import requests

from tests.dicom_peers import case_files, free_port
from tests.orthanc import ORTHANC, start_orthanc, stop_orthanc
from tests.test_dicom_node_receive import QUIET_S, wait_for
from tests.test_dicom_send import engine_with_rtstruct  # noqa: F401 (a fixture)
from webapp.delineation.dicom.assembly import Assembly
from webapp.delineation.dicom.models import DicomPeer, DicomReceipt, ResultSend
from webapp.delineation.dicom.scp import Node
from webapp.delineation.models import Job

pytestmark = [
    pytest.mark.skipif(ORTHANC is None, reason="Orthanc is installed by make system-packages"),
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def node():
    assembly = Assembly(quiet_s=QUIET_S, poll_s=0.2)
    scp = Node(assembly, "DELINEO", "127.0.0.1", free_port(), timeout_s=20)
    scp.start()
    assembly.start()
    yield scp
    scp.stop()
    assembly.stop()


@pytest.fixture
def orthanc(node, tmp_path):
    pacs = start_orthanc(tmp_path / "orthanc", {"delineo": ["DELINEO", "127.0.0.1", node.port]})
    yield pacs
    stop_orthanc(pacs)


def test_orthanc_sends_a_ct_and_gets_the_rtstruct_back(node, orthanc, django_user_model, engine_with_rtstruct):  # noqa: F811
    alice = django_user_model.objects.create_user("alice")
    DicomPeer.objects.create(name="PACS", ae_title="ORTHANC", host="127.0.0.1", port=orthanc.dicom_port, owner=alice,
                             model_name="hn-oar", send_results=True)  # fmt: skip
    images, rtstruct = case_files("pt_104")
    ct = pydicom.dcmread(images[0], stop_before_pixels=True)
    uploaded = orthanc.upload(images)
    (study,) = {u["ParentStudy"] for u in uploaded}
    assert orthanc.post("/modalities/delineo/echo", json_body={}) == {}
    orthanc.post("/modalities/delineo/store", json_body={"Resources": [study], "Synchronous": True})

    sent = wait_for(lambda: ResultSend.objects.exclude(state="queued").first(), timeout=180)
    assert sent.state == "sent", sent.message
    receipt = DicomReceipt.objects.get()
    assert (receipt.calling_ae, receipt.instances, receipt.scan.owner) == ("ORTHANC", 128, alice)
    job = Job.objects.get()
    assert job.status == "succeeded" and job.scan == receipt.scan

    (found,) = orthanc.find("Instance", {"Modality": "RTSTRUCT"})
    raw = requests.get(f"{orthanc.url}/instances/{found}/file", timeout=60).content
    back = pydicom.dcmread(__import__("io").BytesIO(raw))
    assert back.SOPInstanceUID == pydicom.dcmread(rtstruct).SOPInstanceUID
    referenced = back.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == ct.SeriesInstanceUID
    ct_uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in images}
    contour_uids = {
        image.ReferencedSOPInstanceUID for image in referenced.ContourImageSequence
    }
    assert contour_uids and contour_uids <= ct_uids
    assert back.StudyInstanceUID == ct.StudyInstanceUID  # filed under the CT's study in the PACS


def test_an_orthanc_modality_not_configured_as_a_peer_is_rejected(node, orthanc):
    from webapp.delineation.models import AccessEvent

    with pytest.raises(requests.HTTPError):
        orthanc.post("/modalities/delineo/echo", json_body={})
    (event,) = AccessEvent.objects.filter(action="dicom_rejected")
    assert event.calling_ae == "ORTHANC" and event.client_ip == "127.0.0.1"
