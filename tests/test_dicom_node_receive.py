"""Scans arriving at the DICOM node from real SCUs (dcmtk's storescu, pynetdicom) on a free
loopback port: stored as they arrive (640 in 750 folders), a study complete once its
association is released and quiet, then the upload path (pre-flight, de-identification,
owner, patient, access log); a dropped association keeps what arrived; a series the
pre-flight refuses is recorded with its refusal on its scan page."""

from __future__ import annotations

import logging
import stat
import subprocess
import time

import pydicom
import pytest
from django.test import Client

from tests.dicom_peers import case_files, need_dcmtk, running_node, scu
from webapp.delineation.dicom.assembly import original_dir
from webapp.delineation.dicom.models import DicomPeer, DicomReceipt
from webapp.delineation.models import AccessEvent, Scan

pytestmark = pytest.mark.django_db(transaction=True)  # the node's threads use their own connections

QUIET_S = 1.5


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="alice-password-123")


@pytest.fixture
def peer(alice):
    return DicomPeer.objects.create(name="CT_SIM", ae_title="CTSIM1", host="127.0.0.1", port=104, owner=alice)


@pytest.fixture
def node(peer):
    with running_node(QUIET_S) as scp:
        yield scp


def wait_for(predicate, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out: {list(DicomReceipt.objects.values())}")


def ingested_scan() -> Scan:
    receipt = wait_for(lambda: DicomReceipt.objects.filter(state__in=["ingested", "failed"]).first())
    assert receipt.state == "ingested", receipt.error
    return receipt.scan


def send_datasets(port: int, paths, abort_after: int | None = None) -> list[int]:
    datasets = [pydicom.dcmread(p) for p in paths]
    assoc = scu("CTSIM1", sorted({str(ds.SOPClassUID) for ds in datasets})).associate(
        "127.0.0.1", port, ae_title="DELINEO"
    )
    assert assoc.is_established
    statuses = []
    for k, ds in enumerate(datasets):
        if abort_after is not None and k == abort_after:
            assoc.abort()  # the sender goes away mid-series
            return statuses
        statuses.append(int(assoc.send_c_store(ds).Status))
    assoc.release()
    return statuses


def test_a_case_sent_with_storescu_becomes_a_scan_of_the_peers_owner(node, alice, django_user_model, caplog):
    need_dcmtk()
    caplog.set_level(logging.DEBUG)  # what the configured loggers let through, from every thread
    images, rtstruct = case_files("pt_104")
    sent = subprocess.run(
        ["storescu", "-aet", "CTSIM1", "-aec", "DELINEO", "+sd", "127.0.0.1", str(node.port), str(images[0].parent)],
        capture_output=True,
        timeout=300,
    )
    assert sent.returncode == 0, sent.stderr
    scan = ingested_scan()
    assert scan.owner == alice and scan.input_kind == "dicom_folder" and scan.file_count == 129
    (series,) = scan.preflight["series"]
    assert series["status"] == "ok" and series["images"] == 128
    assert [o["modality"] for o in scan.preflight["other_objects"]] == ["RTSTRUCT"]
    assert scan.patient is not None and scan.patient.owner == alice
    # No patient data in the logs: names, IDs, UIDs of what was sent.
    first = pydicom.dcmread(images[0])
    secrets = {str(first.PatientName), first.PatientID, first.StudyInstanceUID, first.SeriesInstanceUID,
               first.SOPInstanceUID, pydicom.dcmread(rtstruct).SOPInstanceUID} - {""}  # fmt: skip
    assert "scan" in caplog.text and [s for s in secrets if s in caplog.text] == []
    # The objects as sent: same SOP Instance UIDs and pixel data.
    stored = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, sorted(original_dir(scan.id).iterdir()))}
    for path in (images[0], images[77], rtstruct):
        sent_ds = pydicom.dcmread(path)
        assert stored[sent_ds.SOPInstanceUID] == sent_ds
    for path in [scan.directory, *scan.directory.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o750 if path.is_dir() else 0o640), path
    event = AccessEvent.objects.get(action="upload")
    assert (event.username, event.calling_ae, event.object_id) == ("dicom:CT_SIM", "CTSIM1", scan.id)
    assert event.object_owner == alice
    # Alice's, like an upload: Bob finds nothing.
    bob = django_user_model.objects.create_user("bob")
    client = Client()
    client.force_login(alice)
    assert client.get(f"/api/scans/{scan.id}/").status_code == 200
    client.force_login(bob)
    assert client.get(f"/api/scans/{scan.id}/").status_code == 404
    assert client.get(f"/scans/{scan.id}/").status_code == 404


def test_a_study_waits_for_release_and_quiet(node):
    images, _ = case_files("pt_104")
    datasets = [pydicom.dcmread(p) for p in images[:12]]
    assoc = scu("CTSIM1", [str(datasets[0].SOPClassUID)]).associate("127.0.0.1", node.port, ae_title="DELINEO")
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0
    time.sleep(QUIET_S + 1)  # quiet, but the association is still open
    receipt = DicomReceipt.objects.get()
    assert (receipt.state, receipt.instances, receipt.open_associations) == ("receiving", 12, 1)
    assoc.release()
    assert ingested_scan().file_count == 12


def test_a_dropped_association_keeps_what_arrived_and_completes_when_the_rest_is_sent(node):
    images, _ = case_files("pt_106")
    assert send_datasets(node.port, images, abort_after=40) == [0] * 40
    time.sleep(QUIET_S + 1.5)
    receipt = DicomReceipt.objects.get()
    assert (receipt.state, receipt.instances, receipt.released) == ("receiving", 40, False)
    assert receipt.open_associations == 0
    assert len(list(original_dir(receipt.id).glob("*.dcm"))) == 40
    assert not Scan.objects.exists()
    # The sender sends the rest, from a little before where it stopped: those 10 are stored once.
    assert send_datasets(node.port, images[30:]) == [0] * (len(images) - 30)
    scan = ingested_scan()
    assert scan.id == receipt.id and scan.file_count == len(images)
    assert scan.preflight["series"][0]["status"] == "ok"


def test_a_series_the_preflight_refuses_is_recorded_with_its_refusal(node, alice):
    images, _ = case_files("pt_108")
    assert send_datasets(node.port, [*images[:10], *images[14:24]]) == [0] * 20  # four slices missing
    scan = ingested_scan()
    (series,) = scan.preflight["series"]
    assert series["status"] != "ok" and series["reason"]
    assert "Nothing in it can be delineated" in scan.preflight["refused"]
    client = Client()
    client.force_login(alice)
    page = client.get(f"/scans/{scan.id}/").content.decode()
    assert series["reason"] in page and "preflight-refused" in page


def test_the_owners_default_de_identifies_what_the_peer_sends(node, peer):
    DicomPeer.objects.filter(pk=peer.pk).update(deidentify=True)
    images, _ = case_files("pt_109")
    assert send_datasets(node.port, images[:16]) == [0] * 16
    scan = ingested_scan()
    assert scan.deidentification["profile"] and scan.deidentification["files"] == 16
    assert not original_dir(scan.id).exists()
    sent = pydicom.dcmread(images[0])
    for path in (scan.directory / "deidentified").iterdir():
        ds = pydicom.dcmread(path)
        assert ds.PatientID != sent.PatientID and ds.SOPInstanceUID != sent.SOPInstanceUID


def test_a_non_image_sop_class_is_refused_with_a_status_and_not_kept(node):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ImplicitVRLittleEndian, RTDoseStorage, generate_uid

    dose = Dataset()
    dose.SOPClassUID, dose.SOPInstanceUID, dose.StudyInstanceUID = RTDoseStorage, generate_uid(), generate_uid()
    dose.Modality = "RTDOSE"
    dose.file_meta = FileMetaDataset()
    dose.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    assoc = scu("CTSIM1", [RTDoseStorage]).associate("127.0.0.1", node.port, ae_title="DELINEO")
    assert assoc.send_c_store(dose).Status == 0x0122  # Refused: SOP Class not supported
    assoc.release()
    time.sleep(QUIET_S + 1)
    assert not DicomReceipt.objects.exists() and not Scan.objects.exists()


def test_a_study_is_bounded_by_the_upload_limits(node, settings):
    settings.DELINEO_MAX_UPLOAD_FILES = 5
    images, _ = case_files("pt_121")
    assert send_datasets(node.port, images[:8]) == [0] * 5 + [0xA700] * 3  # Refused: out of resources
    scan = ingested_scan()
    assert scan.file_count == 5
