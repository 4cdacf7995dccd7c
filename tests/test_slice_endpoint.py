"""GET /api/jobs/{id}/slice/: slices in the radiological display convention with their spacing."""

from __future__ import annotations

import base64
import json

import nibabel as nib
import numpy as np
import pytest
from django.conf import settings

from webapp.delineation.models import Job, Scan

pytestmark = pytest.mark.django_db

SHAPE = (6, 8, 5)  # voxel axes as a DICOM series stores them: I -> patient left, J -> posterior, K -> superior


@pytest.fixture
def lps_job(alice):
    """A finished job whose image is stored in LPS voxel order (not canonical), spacing 2 x 2.5 x 3 mm.

    Label 1 marks the patient's right-anterior-superior corner voxel, label 2 the
    left-posterior-inferior one.
    """
    scan = Scan.objects.create(owner=alice, name="phantom", input_kind="dicom_zip", input_path="x.zip")
    job = Job.objects.create(owner=alice, scan=scan, model_name="hn-oar", status=Job.Status.SUCCEEDED)
    out = job.output_dir
    out.mkdir(parents=True)
    affine = np.diag([-2.0, -2.5, 3.0, 1.0])  # RAS: i runs to the left, j to posterior
    image = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[0, 0, -1] = 1  # most right, most anterior, most superior
    labels[-1, -1, 0] = 2  # most left, most posterior, most inferior
    nib.save(nib.Nifti1Image(image, affine), out / "image.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), out / "labels.nii.gz")
    (out / "structures.json").write_text(json.dumps([]))
    job.result_dir = str(out.relative_to(settings.MEDIA_ROOT))
    job.save()
    return job


def get_slice(client, job, **params):
    response = client.get(f"/api/jobs/{job.id}/slice/", params)
    assert response.status_code == 200, response.content
    body = response.json()
    ct = np.frombuffer(base64.b64decode(body["image"]["data"]), dtype="<i2").reshape(body["rows"], body["columns"])
    lab = np.frombuffer(base64.b64decode(body["labels"]["data"]), dtype=np.uint8).reshape(body["rows"], body["columns"])
    return body, ct, lab


def test_axial_is_radiological(alice_api, lps_job):
    body, ct, lab = get_slice(alice_api, lps_job, plane="axial", index=SHAPE[2] - 1)
    assert (body["rows"], body["columns"]) == (SHAPE[1], SHAPE[0])  # rows: A->P, columns: R->L
    assert body["pixel_spacing_mm"] == [2.5, 2.0] and body["slice_spacing_mm"] == 3.0
    assert body["orientation"] == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
    assert lab[0, 0] == 1  # patient's right on the image left, anterior at the top
    assert body["labels_present"] == [1] and body["count"] == SHAPE[2]
    _, _, bottom = get_slice(alice_api, lps_job, plane="axial", index=0)
    assert bottom[-1, -1] == 2
    # The CT slice carries the values of the same voxels.
    assert ct[0, 0] == np.arange(np.prod(SHAPE)).reshape(SHAPE)[0, 0, -1]


def test_coronal_and_sagittal(alice_api, lps_job):
    body, _, lab = get_slice(alice_api, lps_job, plane="coronal", index=SHAPE[1] - 1)  # most anterior
    assert (body["rows"], body["columns"]) == (SHAPE[2], SHAPE[0])
    assert body["pixel_spacing_mm"] == [3.0, 2.0]
    assert lab[0, 0] == 1  # superior at the top, patient's right on the left
    body, _, lab = get_slice(alice_api, lps_job, plane="sagittal", index=SHAPE[0] - 1)  # most right
    assert (body["rows"], body["columns"]) == (SHAPE[2], SHAPE[1])
    assert body["pixel_spacing_mm"] == [3.0, 2.5]
    assert body["orientation"]["left"] == "A"
    assert lab[0, 0] == 1  # superior at the top, anterior on the left


def test_default_index_goes_through_the_structures(alice_api, lps_job):
    body, _, _ = get_slice(alice_api, lps_job, plane="axial")
    assert body["index"] == 2  # mean of the two markers' axial indices 4 and 0
    assert body["centres"] == {"1": [5, 7, 4], "2": [0, 0, 0]}  # canonical (R, A, S) voxel indices


@pytest.mark.parametrize("params", [{"plane": "oblique"}, {"plane": "axial", "index": 99}, {"index": "x"}])
def test_bad_parameters(alice_api, lps_job, params):
    response = alice_api.get(f"/api/jobs/{lps_job.id}/slice/", params)
    assert response.status_code == 400
    assert response.json()["detail"]


def test_unfinished_job_has_no_slices(alice_api, lps_job):
    Job.objects.filter(pk=lps_job.pk).update(status=Job.Status.RUNNING)
    response = alice_api.get(f"/api/jobs/{lps_job.id}/slice/")
    assert response.status_code == 409
    assert "not finished" in response.json()["detail"]
