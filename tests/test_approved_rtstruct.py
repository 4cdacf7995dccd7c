"""The RTSTRUCT of a revision: MANUAL for the structures corrected, APPROVED with the reviewer
once approved, a Structure Set Label and SOP Instance UID of its own, read back by the engine's
importer (the round-trip gate) on the uploaded series."""

from __future__ import annotations

import io
import shutil
import subprocess
import zipfile

import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.conftest import segment_on_the_series_grid
from tests.workflow import content, edit, rtstruct_masks
from webapp.delineation import engine_client
from webapp.delineation.models import Job, Scan

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("exports_at_once")]

# On the 16 x 16 x 8 test series (tests/factories.py: LPS, 2 x 2 x 3 mm) an axial slice's row r
# and column c show voxel (i, j) = (c, r): Brainstem covers rows 4-8, columns 4-7 of slices 2-4.
AROUND_BRAINSTEM = [[3, 3], [3, 8.5], [9.5, 8.5], [9.5, 3]]


@pytest.fixture
def job(alice, alice_api, alice_dicom_scan, monkeypatch, django_capture_on_commit_callbacks) -> dict:
    alice.first_name, alice.last_name = "Alice", "Smith"
    alice.save()
    monkeypatch.setattr(engine_client, "available_models", lambda: ["hn-oar"])
    monkeypatch.setattr(engine_client, "run_segmentation", segment_on_the_series_grid)
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_api.post("/api/jobs/", {"scan": alice_dicom_scan["id"], "model": "hn-oar"}, format="json")
    job = alice_api.get(f"/api/jobs/{response.json()['id']}/").json()
    assert job["status"] == "succeeded", job
    return job


def download(client, job, revision=None) -> bytes:
    url = f"/api/jobs/{job['id']}/rtstruct.dcm" + ("" if revision is None else f"?revision={revision}")
    response = client.get(url)
    assert response.status_code == 200, response.content
    return content(response)


def erase_brainstem(client, job) -> None:
    """Save a revision with the Brainstem erased on axial slice 3."""
    response = edit(
        client, job["id"], structure="Brainstem", plane="axial", index=3, mode="erase", polygon=AROUND_BRAINSTEM
    )
    assert response.status_code == 201, response.content


def test_an_approved_correction(alice_api, job):
    erase_brainstem(alice_api, job)
    unapproved = pydicom.dcmread(io.BytesIO(download(alice_api, job)))
    assert unapproved.ApprovalStatus == "UNAPPROVED" and "ReviewerName" not in unapproved
    response = alice_api.post(f"/api/jobs/{job['id']}/approve/", {"comment": "All slices checked"}, format="json")
    assert response.status_code == 200, response.content
    data = download(alice_api, job)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.ApprovalStatus == "APPROVED" and str(ds.ReviewerName) == "Smith^Alice"
    assert len(ds.ReviewDate) == 8 and len(ds.ReviewTime) == 6
    assert ds.StructureSetLabel == "Delineo r1" and ds.SOPInstanceUID != unapproved.SOPInstanceUID
    rois = {roi.ROIName: roi for roi in ds.StructureSetROISequence}
    assert rois["Brainstem"].ROIGenerationAlgorithm == "MANUAL"
    assert rois["Mandible"].ROIGenerationAlgorithm == "AUTOMATIC"
    assert all("cd" * 32 in roi.ROIDescription for roi in rois.values())  # the model's weights kept
    masks = rtstruct_masks(data, job["scan"])
    assert not masks["Brainstem"][:, :, 3].any()
    assert masks["Brainstem"][:, :, [2, 4]].sum() == 2 * 4 * 5
    assert masks["Mandible"].sum() == 4 * 5 * 3
    # The model's output is still offered as it was written.
    assert download(alice_api, job, revision=0).endswith(b"DICM the model's own")


def test_editing_an_approved_set_makes_an_unapproved_revision(alice_api, job):
    assert alice_api.post(f"/api/jobs/{job['id']}/approve/", {}, format="json").json()["number"] == 0
    approved = pydicom.dcmread(io.BytesIO(download(alice_api, job)))
    assert approved.ApprovalStatus == "APPROVED" and approved.StructureSetLabel == "Delineo r0"
    assert {roi.ROIGenerationAlgorithm for roi in approved.StructureSetROISequence} == {"AUTOMATIC"}
    response = edit(alice_api, job["id"], structure="Mandible", plane="axial", mode="delete", first=3, last=3)
    assert response.status_code == 201
    latest = pydicom.dcmread(io.BytesIO(download(alice_api, job)))
    assert latest.ApprovalStatus == "UNAPPROVED" and latest.StructureSetLabel == "Delineo r1"
    assert pydicom.dcmread(io.BytesIO(download(alice_api, job, revision=0))).ApprovalStatus == "APPROVED"


def test_a_tampered_revision_rtstruct_is_not_served(alice_api, job):
    alice_api.post(f"/api/jobs/{job['id']}/approve/", {}, format="json")
    download(alice_api, job)
    path = Job.objects.get(pk=job["id"]).result_path / "revisions" / "0" / "rtstruct.dcm"
    path.write_bytes(path.read_bytes() + b"\0")
    response = alice_api.get(f"/api/jobs/{job['id']}/rtstruct.dcm")
    assert response.status_code == 409 and "damaged" in response.json()["detail"]


def test_an_unknown_revision_is_refused(alice_api, job):
    response = alice_api.get(f"/api/jobs/{job['id']}/rtstruct.dcm?revision=3")
    assert response.status_code == 400 and "no revision 3" in response.json()["detail"]


def test_the_approved_rtstruct_passes_dciodvfy_and_plastimatch_reads_the_correction(alice_api, job, tmp_path):
    from tests.dicom_tools import dciodvfy_errors
    from tests.stack import require

    require(shutil.which("plastimatch") is not None, "plastimatch is not installed")
    erase_brainstem(alice_api, job)
    alice_api.post(f"/api/jobs/{job['id']}/approve/", {}, format="json")
    (tmp_path / "rtstruct.dcm").write_bytes(download(alice_api, job))
    assert dciodvfy_errors(tmp_path / "rtstruct.dcm") == []
    with zipfile.ZipFile(Scan.objects.get(pk=job["scan"]).engine_input) as archive:
        archive.extractall(tmp_path / "upload")
    result = subprocess.run(
        [
            "plastimatch",
            "convert",
            "--input",
            str(tmp_path / "rtstruct.dcm"),
            "--referenced-ct",
            str(tmp_path / "upload" / "CT"),
            "--output-prefix",
            str(tmp_path / "read"),
            "--prefix-format",
            "nii.gz",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    stored = Job.objects.get(pk=job["id"]).result_path / "revisions" / "1" / "labels.nii.gz"
    revision = nib.as_closest_canonical(nib.load(stored))
    theirs = nib.as_closest_canonical(nib.load(tmp_path / "read" / "Brainstem.nii.gz"))
    assert np.allclose(theirs.affine, revision.affine, atol=1e-3)
    ours, read = np.asarray(revision.dataobj) == 1, np.asarray(theirs.dataobj) > 0
    assert 2 * (ours & read).sum() / (ours.sum() + read.sum()) >= 0.95
    assert not read[:, :, 3].any() and read[:, :, 2].any() and read[:, :, 4].any()  # erased on slice 3 only


def test_send_to_sends_the_approved_revision(alice, alice_api, job, django_capture_on_commit_callbacks):
    from pynetdicom import AE, evt
    from pynetdicom.presentation import AllStoragePresentationContexts

    from tests.dicom_peers import free_port
    from webapp.delineation.dicom.models import DicomPeer

    received = []

    def on_store(event):
        received.append(event.dataset)
        return 0x0000

    port = free_port()
    ae = AE(ae_title="TPS1")
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        DicomPeer.objects.create(name="TPS", ae_title="TPS1", host="127.0.0.1", port=port, owner=alice)
        erase_brainstem(alice_api, job)
        alice_api.post(f"/api/jobs/{job['id']}/approve/", {}, format="json")
        with django_capture_on_commit_callbacks(execute=True):
            response = alice_api.post(f"/api/jobs/{job['id']}/send/", {"destination": "TPS"}, format="json")
        assert response.status_code == 202, response.content
        (state,) = alice_api.get(f"/api/jobs/{job['id']}/").json()["sends"]
        assert (state["state"], state["file"]) == ("sent", "revisions/1/rtstruct.dcm")
        (sent,) = received
        assert sent.ApprovalStatus == "APPROVED" and sent.StructureSetLabel == "Delineo r1"
    finally:
        server.shutdown()


def test_the_seg_of_a_revision(alice_api, job):
    erase_brainstem(alice_api, job)
    response = alice_api.get(f"/api/jobs/{job['id']}/seg.dcm")
    assert response.status_code == 200, response.content
    seg = pydicom.dcmread(io.BytesIO(content(response)))
    assert seg.Modality == "SEG"
    assert [(s.SegmentLabel, s.SegmentAlgorithmType) for s in seg.SegmentSequence] == [
        ("Brainstem", "SEMIAUTOMATIC"),
        ("Mandible", "AUTOMATIC"),
    ]
    frames = [f.SegmentIdentificationSequence[0].ReferencedSegmentNumber for f in seg.PerFrameFunctionalGroupsSequence]
    assert frames.count(1) == 2 and frames.count(2) == 3  # Brainstem erased on one of its three slices
    response = alice_api.get(f"/api/jobs/{job['id']}/seg.dcm?revision=0")
    assert content(response).endswith(b"DICM the model's own SEG")


def test_a_corrected_revision_of_a_job_outside_its_domain_still_needs_the_acknowledgement(alice_api, job):
    erase_brainstem(alice_api, job)
    Job.objects.filter(pk=job["id"]).update(domain={"in_domain": False, "reasons": ["the scan covers 40 mm"]})
    for name in ("rtstruct.dcm", "seg.dcm"):
        refused = alice_api.get(f"/api/jobs/{job['id']}/{name}?revision=1")
        assert refused.status_code == 409 and "covers 40 mm" in refused.json()["detail"]
        served = alice_api.get(f"/api/jobs/{job['id']}/{name}?revision=1&acknowledge=outside-domain")
        assert served.status_code == 200
