"""The node's Storage SCP (webapp/delineation/dicom/scp.py) against real SCUs: pynetdicom
and dcmtk's echoscu/storescu, on a free loopback port. The receiver here is a stand-in
that remembers what it was given; peers, storage and ingest have their own tests."""

from __future__ import annotations

import subprocess

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian, RTPlanStorage, generate_uid

from tests.dicom_peers import case_files, free_port, need_dcmtk, scu, send
from webapp.delineation.dicom import conformance
from webapp.delineation.dicom.scp import Node


class MemoryReceiver:
    def __init__(self, allowed: set[str], fail: bool = False) -> None:
        self.allowed, self.fail = allowed, fail
        self.stored: list[str] = []
        self.ended: list[bool] = []

    def authorise(self, calling: str, address: str):
        return calling if calling in self.allowed else None

    def store(self, peer, association, dataset, encoded) -> int:
        if self.fail:
            raise RuntimeError("a bug in the receiver")
        assert encoded[128:132] == b"DICM"  # the file as sent, with its meta header
        self.stored.append(str(dataset.SOPInstanceUID))
        return conformance.SUCCESS

    def association_ended(self, peer, association, released: bool) -> None:
        self.ended.append(released)


@pytest.fixture
def node():
    receiver = MemoryReceiver({"CT_SIM"})
    scp = Node(receiver, "DELINEO", "127.0.0.1", free_port(), timeout_s=10)
    scp.start()
    yield scp
    scp.stop()


def test_c_echo_from_a_configured_peer(node):
    assoc = scu("CT_SIM").associate("127.0.0.1", node.port, ae_title="DELINEO")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_unknown_calling_ae_title_is_rejected_at_association(node):
    assoc = scu("INTRUDER").associate("127.0.0.1", node.port, ae_title="DELINEO")
    assert assoc.is_rejected and not assoc.is_established
    rejection = assoc.acceptor.primitive
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (0x01, 0x01, 0x03)
    assert node.receiver.stored == []


def test_ct_slices_and_rtstruct_are_stored_other_sop_classes_refused(node):
    images, rtstruct = case_files()
    assert send("CT_SIM", node.port, [*images[:3], rtstruct]) == [0, 0, 0, 0]
    plan = Dataset()
    plan.SOPClassUID, plan.SOPInstanceUID = RTPlanStorage, generate_uid()
    plan.Modality = "RTPLAN"
    plan.file_meta = FileMetaDataset()
    plan.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ae = scu("CT_SIM", [RTPlanStorage])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DELINEO")
    assert assoc.is_established
    assert assoc.send_c_store(plan).Status == conformance.REFUSED_SOP_CLASS_NOT_SUPPORTED
    assoc.release()
    expected = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in [*images[:3], rtstruct]]
    assert node.receiver.stored == expected  # the plan was not kept
    assert node.receiver.ended == [True, True]


def test_a_receiver_failure_is_a_failure_status_and_the_node_serves_on():
    receiver = MemoryReceiver({"CT_SIM"}, fail=True)
    scp = Node(receiver, "DELINEO", "127.0.0.1", free_port(), timeout_s=10)
    scp.start()
    try:
        images, _ = case_files()
        assert send("CT_SIM", scp.port, images[:2]) == [conformance.PROCESSING_FAILURE] * 2
        receiver.fail = False
        assert send("CT_SIM", scp.port, images[:1]) == [0]
    finally:
        scp.stop()


def test_dcmtk_echoscu_and_storescu(node):
    need_dcmtk()
    images, _ = case_files()
    echo = subprocess.run(
        ["echoscu", "-aet", "CT_SIM", "-aec", "DELINEO", "127.0.0.1", str(node.port)], capture_output=True, timeout=30
    )
    assert echo.returncode == 0, echo.stderr
    store = subprocess.run(
        ["storescu", "-aet", "CT_SIM", "-aec", "DELINEO", "127.0.0.1", str(node.port), *map(str, images[:4])],
        capture_output=True,
        timeout=60,
    )
    assert store.returncode == 0, store.stderr
    assert len(node.receiver.stored) == 4
    refused = subprocess.run(
        ["echoscu", "-aet", "NOBODY", "-aec", "DELINEO", "127.0.0.1", str(node.port)], capture_output=True, timeout=30
    )
    assert refused.returncode != 0
    assert b"Calling AE Title Not Recognized" in refused.stderr + refused.stdout
