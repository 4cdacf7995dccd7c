"""The node against a real PACS: Orthanc, started by the test with its own configuration on
free loopback ports, sends an openkbp CT to the node (REST ``/modalities/{id}/store``); the
peer's rule queues the job, and the node sends the RTSTRUCT back to Orthanc, where the test
finds it over REST and checks that it references the CT's series and SOP instances.

The job runs the real engine (hn-oar, about 20 s on two cores) in-process, as Celery's
eager mode runs it; the RTSTRUCT that comes back is Delineo's own, checked with dciodvfy."""

from __future__ import annotations

import pydicom
import pytest
import requests

from tests.dicom_peers import case_files, running_node
from tests.dicom_tools import dciodvfy_errors
from tests.orthanc import need_orthanc, start_orthanc, stop_orthanc
from tests.test_dicom_node_receive import QUIET_S, wait_for
from webapp.delineation.dicom.models import DicomPeer, DicomReceipt, ResultSend
from webapp.delineation.models import Job

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def node():
    with running_node(QUIET_S) as scp:
        yield scp


@pytest.fixture
def orthanc(node, tmp_path):
    need_orthanc()
    pacs = start_orthanc(tmp_path / "orthanc", {"delineo": ["DELINEO", "127.0.0.1", node.port]})
    yield pacs
    stop_orthanc(pacs)


def test_orthanc_sends_a_ct_and_gets_the_rtstruct_back(node, orthanc, django_user_model, tmp_path):
    alice = django_user_model.objects.create_user("alice")
    DicomPeer.objects.create(name="PACS", ae_title="ORTHANC", host="127.0.0.1", port=orthanc.dicom_port, owner=alice,
                             model_name="hn-oar", send_results=True)  # fmt: skip
    images, _ = case_files("pt_104")
    ct = pydicom.dcmread(images[0], stop_before_pixels=True)
    uploaded = orthanc.upload(images)
    (study,) = {u["ParentStudy"] for u in uploaded}
    assert orthanc.post("/modalities/delineo/echo", json_body={}) == {}
    orthanc.post("/modalities/delineo/store", json_body={"Resources": [study], "Synchronous": True})

    sent = wait_for(lambda: ResultSend.objects.exclude(state="queued").first(), timeout=600)
    assert sent.state == "sent", (sent.message, Job.objects.values("status", "error").first())
    receipt = DicomReceipt.objects.get()
    assert (receipt.calling_ae, receipt.instances, receipt.scan.owner) == ("ORTHANC", 128, alice)
    job = Job.objects.get()
    assert job.status == "succeeded" and job.scan == receipt.scan and job.model_name == "hn-oar"

    (found,) = orthanc.find("Instance", {"Modality": "RTSTRUCT"})
    back_path = tmp_path / "from-orthanc.dcm"
    back_path.write_bytes(requests.get(f"{orthanc.url}/instances/{found}/file", timeout=60).content)
    back = pydicom.dcmread(back_path)
    assert back.SOPInstanceUID == pydicom.dcmread(job.result_path / "rtstruct.dcm").SOPInstanceUID
    assert back.StudyInstanceUID == ct.StudyInstanceUID  # filed under the CT's study in the PACS
    referenced = back.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == ct.SeriesInstanceUID
    ct_uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in images}
    assert {image.ReferencedSOPInstanceUID for image in referenced.ContourImageSequence} <= ct_uids
    assert {"Brainstem", "SpinalCord", "Mandible"} <= {roi.ROIName for roi in back.StructureSetROISequence}
    assert dciodvfy_errors(back_path) == []


def test_an_orthanc_modality_not_configured_as_a_peer_is_rejected(node, orthanc):
    from webapp.delineation.models import AccessEvent

    with pytest.raises(requests.HTTPError):
        orthanc.post("/modalities/delineo/echo", json_body={})
    (event,) = AccessEvent.objects.filter(action="dicom_rejected")
    assert event.calling_ae == "ORTHANC" and event.client_ip == "127.0.0.1"
