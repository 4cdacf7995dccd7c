"""POST /api/jobs/{id}/edits/, GET .../revisions/, POST .../approve/: corrections saved as
revisions of the label map (the model's output stays revision 0), and their approval."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import stat
import zipfile

import nibabel as nib
import numpy as np
import pydicom
import pytest
from django.conf import settings

from tests.conftest import fake_propagation_masks
from tests.workflow import content, edit
from webapp.delineation.models import AccessEvent, Job, Scan, Team

pytestmark = pytest.mark.django_db

# The fake engine's grid (tests/conftest.py): 20 x 24 x 10, RAS canonical, 2 x 2 x 3 mm. On an
# axial slice, row r and column c show voxel (19 - c, 23 - r): Brainstem (x 6-9, y 6-11, z 3-5)
# covers rows 12-17 and columns 10-13 of the axial slices 3 to 5.
AROUND_BRAINSTEM = [[11, 9], [11, 14], [18, 14], [18, 9]]


def axial_labels(client, job_id, index, revision=None) -> np.ndarray:
    params = {"plane": "axial", "index": index, **({"revision": revision} if revision is not None else {})}
    body = client.get(f"/api/jobs/{job_id}/slice/", params).json()
    return np.frombuffer(base64.b64decode(body["labels"]["data"]), np.uint8).reshape(body["rows"], body["columns"])


def labels_download(client, job_id, revision=None) -> np.ndarray:
    url = f"/api/jobs/{job_id}/labels.nii.gz" + (f"?revision={revision}" if revision is not None else "")
    response = client.get(url)
    assert response.status_code == 200, response.content
    data = content(response)
    return np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(data)).dataobj)


def test_erase_makes_a_revision_and_keeps_the_model_output(alice_api, alice_job):
    job_id = alice_job["id"]
    model = labels_download(alice_api, job_id)
    response = edit(
        alice_api, job_id, structure="Brainstem", plane="axial", index=4, mode="erase", polygon=AROUND_BRAINSTEM
    )
    assert response.status_code == 201, response.content
    revision = response.json()
    assert revision["number"] == 1 and revision["parent"] == 0 and revision["author"] == "alice"
    assert revision["changed"] == ["Brainstem"] and revision["edited"] == ["Brainstem"]
    assert revision["edit"] == {"mode": "erase", "structure": "Brainstem", "plane": "axial", "index": 4}
    brainstem = revision["measures"]["Brainstem"]
    assert brainstem["dice"] == pytest.approx(2 * 48 / (72 + 48), abs=1e-4)  # one of three slices gone
    assert brainstem["added_path_length_mm"] == 0.0  # only erased: no contour drawn
    assert brainstem["volume_cm3"] == pytest.approx(48 * 12 / 1000)
    assert revision["measures"]["Mandible"] == {
        "edited": False,
        "dice": 1.0,
        "added_path_length_mm": 0.0,
        "volume_cm3": pytest.approx(36 * 12 / 1000),
    }
    assert 1 not in axial_labels(alice_api, job_id, 4) and 1 in axial_labels(alice_api, job_id, 3)
    assert 1 in axial_labels(alice_api, job_id, 4, revision=0)  # the model's output stays
    latest = labels_download(alice_api, job_id)
    assert not (latest[:, :, 4] == 1).any() and (latest[:, :, [3, 5]] == model[:, :, [3, 5]]).all()
    assert (labels_download(alice_api, job_id, revision=0) == model).all()
    folder = Job.objects.get(pk=job_id).result_path / "revisions"
    assert stat.S_IMODE(os.stat(folder / "1").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(folder / "1" / "labels.nii.gz").st_mode) == 0o640


def test_add_with_a_polygon_and_with_a_run_length_mask(alice_api, alice_job):
    job_id = alice_job["id"]
    response = edit(
        alice_api,
        job_id,
        structure="Brainstem",
        plane="axial",
        index=8,
        mode="add",
        polygon=[[2, 2], [2, 5], [5, 5], [5, 2]],
    )
    assert response.status_code == 201, response.content
    assert (axial_labels(alice_api, job_id, 8)[2:6, 2:6] == 1).all()
    assert response.json()["measures"]["Brainstem"]["added_path_length_mm"] == pytest.approx(12 * 2.0)
    rows, columns = 10, 20  # coronal: rows superior to inferior, columns right to left
    runs = [1, 3, rows * columns - 4]  # row 0, columns 1-3
    response = edit(alice_api, job_id, structure="Mandible", plane="coronal", index=0, mode="add", mask=runs)
    assert response.status_code == 201, response.content
    assert response.json()["number"] == 2 and response.json()["parent"] == 1
    coronal = alice_api.get(f"/api/jobs/{job_id}/slice/", {"plane": "coronal", "index": 0}).json()
    lab = np.frombuffer(base64.b64decode(coronal["labels"]["data"]), np.uint8).reshape(coronal["rows"], -1)
    assert (lab[0, 1:4] == 2).all() and lab.sum() == 6


def test_delete_on_a_slice_range_and_interpolate(alice_api, alice_job):
    job_id = alice_job["id"]
    model_slice = axial_labels(alice_api, job_id, 4)
    response = edit(alice_api, job_id, structure="Brainstem", plane="axial", mode="delete", first=4, last=4)
    assert response.status_code == 201, response.content
    assert 1 not in axial_labels(alice_api, job_id, 4)
    response = edit(alice_api, job_id, structure="Brainstem", plane="axial", mode="interpolate", first=3, last=5)
    assert response.status_code == 201, response.content
    assert ((axial_labels(alice_api, job_id, 4) == 1) == (model_slice == 1)).all()  # same shape at both ends
    assert response.json()["measures"]["Brainstem"]["dice"] == 1.0
    # A smaller shape on slice 5: the slice between is between the two.
    edit(
        alice_api,
        job_id,
        structure="Brainstem",
        plane="axial",
        index=5,
        mode="erase",
        polygon=[[11, 9], [11, 14], [14.5, 14], [14.5, 9]],
    )
    edit(alice_api, job_id, structure="Brainstem", plane="axial", mode="interpolate", first=3, last=5)
    sizes = [int((axial_labels(alice_api, job_id, k) == 1).sum()) for k in (3, 4, 5)]
    assert sizes[0] > sizes[1] > sizes[2] > 0
    response = edit(alice_api, job_id, structure="Brainstem", plane="axial", mode="delete", first=0, last=9)
    assert response.json()["measures"]["Brainstem"]["volume_cm3"] == 0


def test_undo_through_revisions(alice_api, alice_job):
    job_id = alice_job["id"]
    model = labels_download(alice_api, job_id)
    edit(alice_api, job_id, structure="Brainstem", plane="axial", index=4, mode="erase", polygon=AROUND_BRAINSTEM)
    edit(alice_api, job_id, structure="Mandible", plane="axial", mode="delete", first=0, last=9)
    response = edit(alice_api, job_id, mode="restore", revision=1)
    assert response.status_code == 201 and response.json()["changed"] == ["Mandible"]
    response = edit(alice_api, job_id, mode="restore", revision=0)
    assert response.json()["number"] == 4 and response.json()["edited"] == []
    assert (labels_download(alice_api, job_id) == model).all()
    history = alice_api.get(f"/api/jobs/{job_id}/revisions/").json()
    assert [r["number"] for r in history] == [0, 1, 2, 3, 4]
    assert history[0]["author"] == "" and history[0]["parent"] is None
    assert (labels_download(alice_api, job_id, revision=2)[..., :] == 2).sum() == 0
    response = edit(alice_api, job_id, mode="restore", revision=0)
    assert response.status_code == 400 and "changes no contour" in response.json()["detail"]


def test_approve_and_edit_after_approval(alice_api, alice_job):
    job_id = alice_job["id"]
    response = alice_api.post(f"/api/jobs/{job_id}/approve/", {"comment": "Checked all slices"}, format="json")
    assert response.status_code == 200, response.content
    approved = response.json()
    assert approved["number"] == 0 and approved["approved_by"] == "alice" and approved["approved"]
    assert approved["approval_comment"] == "Checked all slices"
    revision = edit(
        alice_api, job_id, structure="Brainstem", plane="axial", index=4, mode="erase", polygon=AROUND_BRAINSTEM
    ).json()
    assert revision["approved"] is None and revision["approved_by"] == ""
    history = alice_api.get(f"/api/jobs/{job_id}/revisions/").json()
    assert history[0]["approved"] and not history[1]["approved"]  # the approval stays with revision 0
    assert alice_api.post(f"/api/jobs/{job_id}/approve/", {}, format="json").json()["number"] == 1


def test_edits_and_approvals_are_in_the_access_log(alice_api, alice_job):
    job_id = alice_job["id"]
    edit(alice_api, job_id, structure="Brainstem", plane="axial", index=4, mode="erase", polygon=AROUND_BRAINSTEM)
    alice_api.post(f"/api/jobs/{job_id}/approve/", {}, format="json")
    events = AccessEvent.objects.filter(action__in=["edit", "approve"]).order_by("id")
    assert [(e.action, e.username, str(e.object_id), e.filename) for e in events] == [
        ("edit", "alice", job_id, "revisions/1/labels.nii.gz"),
        ("approve", "alice", job_id, "revisions/1/labels.nii.gz"),
    ]


@pytest.mark.parametrize(
    "body,message",
    [
        (
            {"structure": "Parotid_L", "plane": "axial", "index": 4, "mode": "erase", "polygon": AROUND_BRAINSTEM},
            "no structure named 'Parotid_L'; its structures are: Brainstem, Mandible",
        ),
        (
            {"structure": "Brainstem", "plane": "axial", "index": 10, "mode": "erase", "polygon": AROUND_BRAINSTEM},
            "Slice 10 does not exist: the axial slices are numbered 0 to 9",
        ),
        (
            {"structure": "Brainstem", "plane": "oblique", "index": 1, "mode": "add", "polygon": AROUND_BRAINSTEM},
            "The plane must be one of axial, coronal, sagittal",
        ),
        (
            {
                "structure": "Brainstem",
                "plane": "axial",
                "index": 4,
                "mode": "add",
                "polygon": [[11, 9], [18, 14], [11, 14], [18, 9]],
            },
            "The outline crosses itself",
        ),
        (
            {
                "structure": "Brainstem",
                "plane": "axial",
                "index": 4,
                "mode": "add",
                "polygon": [[1, 1], [2, 2], [3, 3]],
            },
            "The outline has no area",
        ),
        (
            {"structure": "Brainstem", "plane": "axial", "index": 4, "mode": "add", "polygon": [[1, 1], [2, 2]]},
            "The outline has no area",
        ),
        (
            {"structure": "Brainstem", "plane": "axial", "index": 4, "mode": "add", "polygon": "a circle"},
            "list of [row, column] points",
        ),
        (
            {"structure": "Brainstem", "plane": "axial", "index": 4, "mode": "add", "mask": [1, 2, 3]},
            "add up to 6 pixels; the slice has 24 x 20 = 480",
        ),
        (
            {"structure": "Brainstem", "plane": "axial", "index": 4, "mode": "paint", "polygon": AROUND_BRAINSTEM},
            "The mode must be one of add, erase, delete, interpolate, restore, direct",
        ),
        (
            {"structure": "Brainstem", "plane": "axial", "mode": "interpolate", "first": 3, "last": 4},
            "at least one slice between",
        ),
        (
            {"structure": "Brainstem", "plane": "axial", "mode": "interpolate", "first": 0, "last": 5},
            "not drawn on slice 0",
        ),
        (
            {"structure": "Brainstem", "plane": "axial", "mode": "delete", "first": 5, "last": 3},
            "The first slice (5) comes after the last one (3)",
        ),
        (
            {"structure": "Brainstem", "plane": "axial", "index": 0, "mode": "erase", "polygon": AROUND_BRAINSTEM},
            "changes no contour",
        ),
        ({"mode": "restore", "revision": 7}, "no revision 7"),
    ],
)
def test_bad_edits_are_refused_with_a_message(alice_api, alice_job, body, message):
    response = alice_api.post(f"/api/jobs/{alice_job['id']}/edits/", body, format="json")
    assert response.status_code == 400, response.content
    assert message in response.json()["detail"]
    assert not Job.objects.get(pk=alice_job["id"]).revisions.filter(number__gt=0).exists()
    assert not AccessEvent.objects.filter(action="edit").exists()


@pytest.mark.parametrize("status", [Job.Status.FAILED, Job.Status.RUNNING, Job.Status.QUEUED])
def test_a_job_without_finished_contours_is_not_edited(alice_api, alice_job, status):
    Job.objects.filter(pk=alice_job["id"]).update(status=status, error="The scan has missing slices.")
    body = {"structure": "Brainstem", "plane": "axial", "index": 4, "mode": "erase", "polygon": AROUND_BRAINSTEM}
    response = alice_api.post(f"/api/jobs/{alice_job['id']}/edits/", body, format="json")
    assert response.status_code == 400
    expected = "This job failed, so it has no contours to edit" if status == "failed" else "has not finished yet"
    assert expected in response.json()["detail"]
    assert alice_api.post(f"/api/jobs/{alice_job['id']}/approve/", {}, format="json").status_code == 400


def test_team_members_read_revisions_but_do_not_edit(alice_api, bob_api, charlie_api, bob, alice_job):
    job_id = alice_job["id"]
    edit(alice_api, job_id, structure="Brainstem", plane="axial", index=4, mode="erase", polygon=AROUND_BRAINSTEM)
    body = {"structure": "Brainstem", "plane": "axial", "mode": "delete", "first": 0, "last": 9}
    assert bob_api.get(f"/api/jobs/{job_id}/revisions/").status_code == 404
    team = Team.objects.create(name="H&N")
    team.members.add(bob)
    Scan.objects.get(pk=alice_job["scan"]).shared_with.add(team)
    assert [r["number"] for r in bob_api.get(f"/api/jobs/{job_id}/revisions/").json()] == [0, 1]
    response = bob_api.post(f"/api/jobs/{job_id}/edits/", body, format="json")
    assert response.status_code == 403 and "Only the owner of this scan (alice)" in response.json()["detail"]
    assert bob_api.post(f"/api/jobs/{job_id}/approve/", {}, format="json").status_code == 403
    assert charlie_api.post(f"/api/jobs/{job_id}/edits/", body, format="json").status_code == 404
    assert Job.objects.get(pk=job_id).revisions.count() == 2


def test_a_revision_keeps_the_voxel_order_of_the_model_output(alice_api, alice):
    """The job's label map in LPS voxel order: the revision's NIfTI is on the same grid, in the same order."""
    scan = Scan.objects.create(owner=alice, name="phantom", input_kind="dicom_zip", input_path="x.zip")
    structures = [{"label": 1, "name": "Brainstem", "color": [255, 0, 0]}]
    job = Job.objects.create(
        owner=alice, scan=scan, model_name="hn-oar", status=Job.Status.SUCCEEDED, structures=structures
    )
    out = job.output_dir
    out.mkdir(parents=True)
    affine = np.diag([-2.0, -2.5, 3.0, 1.0])
    labels = np.zeros((6, 8, 5), np.uint8)
    labels[1:3, 2:5, 1:4] = 1
    nib.save(nib.Nifti1Image(np.zeros(labels.shape, np.int16), affine), out / "image.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), out / "labels.nii.gz")
    job.result_dir = str(out.relative_to(settings.MEDIA_ROOT))
    job.save()
    response = edit(alice_api, job.id, structure="Brainstem", plane="axial", mode="delete", first=3, last=3)
    assert response.status_code == 201, response.content
    saved = nib.load(out / "revisions" / "1" / "labels.nii.gz")
    assert np.allclose(saved.affine, affine)
    expected = labels.copy()
    expected[:, :, 3] = 0
    assert (np.asarray(saved.dataobj) == expected).all()


def test_the_job_says_which_revision_is_served_and_whether_it_is_approved(alice_api, alice_job):
    job_id = alice_job["id"]
    assert alice_job["review"] == {
        "revision": 0,
        "approved": False,
        "approved_by": "",
        "revisions": f"/api/jobs/{job_id}/revisions/",
    }
    edit(alice_api, job_id, structure="Brainstem", plane="axial", index=4, mode="erase", polygon=AROUND_BRAINSTEM)
    alice_api.post(f"/api/jobs/{job_id}/approve/", {}, format="json")
    review = alice_api.get(f"/api/jobs/{job_id}/").json()["review"]
    assert (review["revision"], review["approved"], review["approved_by"]) == (1, True, "alice")


def test_the_viewer_offers_editing_to_the_owner_and_the_history_to_the_team(client, alice, bob, alice_job):
    url = f"/jobs/{alice_job['id']}/"
    client.force_login(alice)
    page = client.get(url).content.decode()
    assert 'id="editor"' in page and f"/api/jobs/{alice_job['id']}/edits" in page and 'id="approve"' in page
    assert 'id="revision-history"' in page and "/static/js/editor.js" in page
    team = Team.objects.create(name="H&N")
    team.members.add(bob)
    Scan.objects.get(pk=alice_job["scan"]).shared_with.add(team)
    client.force_login(bob)
    page = client.get(url).content.decode()
    assert 'id="editor"' not in page and 'id="revision-history"' in page


def test_a_scan_with_revisions_is_deleted_with_them(alice_api, alice_job, django_capture_on_commit_callbacks):
    job_id = alice_job["id"]
    edit(alice_api, job_id, structure="Brainstem", plane="axial", index=4, mode="erase", polygon=AROUND_BRAINSTEM)
    edit(alice_api, job_id, structure="Mandible", plane="axial", mode="delete", first=0, last=9)
    folder = Job.objects.get(pk=job_id).result_path
    with django_capture_on_commit_callbacks(execute=True):  # the folder goes once the deletion commits
        response = alice_api.delete(f"/api/scans/{alice_job['scan']}/")
    assert response.status_code == 204, response.content
    assert not Job.objects.filter(pk=job_id).exists() and not folder.exists()


def test_a_propagation_is_corrected_from_its_direct_segmentation_and_approved(
    alice_api, alice_propagation, exports_at_once
):
    job_id = alice_propagation["id"]
    response = edit(alice_api, job_id, mode="direct", structure="Brainstem")
    assert response.status_code == 201, response.content
    assert response.json()["changed"] == ["Brainstem"] and response.json()["edit"] == {
        "mode": "direct",
        "structure": "Brainstem",
    }
    labels = labels_download(alice_api, job_id)
    propagated, direct = fake_propagation_masks(labels.shape)
    assert ((labels == 1) == (direct == 1)).all() and ((labels == 2) == (propagated == 2)).all()
    assert alice_api.post(f"/api/jobs/{job_id}/approve/", {}, format="json").status_code == 200
    response = alice_api.get(f"/api/jobs/{job_id}/rtstruct.dcm")
    assert response.status_code == 200, response.content
    ds = pydicom.dcmread(io.BytesIO(content(response)))
    assert ds.ApprovalStatus == "APPROVED" and ds.StructureSetLabel == "Delineo r1"


def test_a_delineation_has_no_direct_segmentation_to_take(alice_api, alice_job):
    response = edit(alice_api, alice_job["id"], mode="direct", structure="Brainstem")
    assert response.status_code == 400 and "no direct segmentation" in response.json()["detail"]


def test_the_masks_zip_of_a_revision(alice_api, alice_job):
    job_id = alice_job["id"]
    edit(alice_api, job_id, structure="Brainstem", plane="axial", index=4, mode="erase", polygon=AROUND_BRAINSTEM)

    def masks(revision=None):
        url = f"/api/jobs/{job_id}/structures.zip" + ("" if revision is None else f"?revision={revision}")
        response = alice_api.get(url)
        assert response.status_code == 200, response.content
        archive = zipfile.ZipFile(io.BytesIO(content(response)))
        brainstem = nib.Nifti1Image.from_bytes(gzip.decompress(archive.read("structures/Brainstem.nii.gz")))
        return np.asarray(brainstem.dataobj), json.loads(archive.read("structures.json"))

    latest, table = masks()
    model, _ = masks(0)
    assert latest.sum() == 48 and model.sum() == 72 and not latest[:, :, 4].any()
    assert [s["volume_cm3"] for s in table] == [pytest.approx(48 * 12 / 1000), pytest.approx(36 * 12 / 1000)]
    folder = Job.objects.get(pk=job_id).result_path / "revisions" / "1"
    assert stat.S_IMODE(os.stat(folder / "structures").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(folder / "structures.zip").st_mode) == 0o640


def test_a_revisions_rtstruct_is_written_by_the_worker_and_its_failure_shown(alice_api, alice_job):
    """The request queues the export (202) and returns; the worker writes it; a failure is the
    answer from then on (409), with the reason for the physician."""
    from webapp.delineation import exports
    from webapp.delineation.models import Export

    job_id = alice_job["id"]
    edit(alice_api, job_id, structure="Brainstem", plane="axial", index=4, mode="erase", polygon=AROUND_BRAINSTEM)
    url = f"/api/jobs/{job_id}/rtstruct.dcm"
    queued = alice_api.get(url)
    assert queued.status_code == 202 and queued.json()["export"]["file"] == "revisions/1/rtstruct.dcm"
    assert alice_api.get(url).json()["export"] == queued.json()["export"]  # asked again: the same one
    (export,) = Export.objects.filter(job_id=job_id)
    assert alice_api.get(f"/api/jobs/{job_id}/").json()["exports"][0]["state"] == "queued"
    assert exports.run(export.pk) == "failed"  # the fake engine's grid is not the series'
    refused = alice_api.get(url)
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        "The RTSTRUCT of revision 1 could not be written: "
        "The corrected contours are not on the grid of the scan's DICOM series."
    )
    assert alice_api.get(f"/api/jobs/{job_id}/").json()["exports"][0]["state"] == "failed"
