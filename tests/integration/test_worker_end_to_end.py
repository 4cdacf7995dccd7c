"""End to end with production-like services: PostgreSQL, Redis, a real Celery worker
subprocess and the real engine. A real openkbp DICOM case (pt_104) is uploaded as a zip
through the API; the RTSTRUCT that comes back must pass dciodvfy, reference the
uploaded series, and rasterise (plastimatch) to the job's label map with Dice >= 0.95.

Prerequisites: PostgreSQL at 127.0.0.1:5432 (user postgres, trust), Redis at
127.0.0.1:6379, dciodvfy (dicom3tools) and plastimatch, ../shared/data. Missing ones
skip the test, or fail it when CI=true.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy.ndimage import map_coordinates

from tests.dicom_tools import dciodvfy_errors
from tests.stack import (
    REDIS_URL,
    PostgresDatabase,
    Stack,
    data_dir,
    reachable,
    require,
    zip_folder,
)

pytestmark = pytest.mark.integration

CASE = ("openkbp_dicom", "pt_104")
DICE_MIN = 0.95


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require(reachable("127.0.0.1", 5432), "PostgreSQL is not reachable at 127.0.0.1:5432")
    require(reachable("127.0.0.1", 6379), "Redis is not reachable at 127.0.0.1:6379")
    database = PostgresDatabase()
    running = Stack(tmp_path_factory.mktemp("stack"), database.url, REDIS_URL)
    try:
        yield running.start()
    finally:
        running.stop()
        database.drop()
        try:
            import redis

            redis.Redis.from_url(REDIS_URL).delete(running.queue)
        except Exception:  # cleanup only
            pass


@pytest.fixture(scope="module")
def case_dir() -> Path:
    return data_dir(*CASE)


@pytest.fixture(scope="module")
def ct_only(case_dir, tmp_path_factory) -> Path:
    """The case's CT slices without its RTSTRUCT (plastimatch's --referenced-ct)."""
    target = tmp_path_factory.mktemp("ct")
    for path in case_dir.iterdir():
        if pydicom.dcmread(path, stop_before_pixels=True).Modality == "CT":
            (target / path.name).symlink_to(path)
    return target


@pytest.fixture(scope="module")
def finished_job(stack, case_dir, tmp_path_factory) -> dict:
    """Upload pt_104 (zip) through the API, run hn-oar on it, wait; returns the job and files."""
    work = tmp_path_factory.mktemp("e2e")
    archive = zip_folder(case_dir, work / "pt_104.zip")
    token = stack.token(*stack.create_account())

    scan = stack.upload_zip(token, archive)
    assert scan["input_kind"] == "dicom_zip" and scan["preflight"]["series"][0]["size"] == [128, 128, 128]

    models = json.loads(stack.api("GET", "/api/models/", token).data)
    require("hn-oar" in [m["name"] for m in models], "model hn-oar is not shipped (engine/weights)")
    job = stack.wait_for_job(stack.create_job(token, scan["id"]), token, timeout_s=600)
    assert job["status"] == "succeeded", f"{job['error']}\n{stack.log_tail('worker')}"

    files = {}
    for name in ("rtstruct.dcm", "labels.nii.gz"):
        response = stack.api("GET", f"/api/jobs/{job['id']}/{name}", token, preload_content=True)
        assert response.status == 200, response.data[:500]
        files[name] = work / name
        files[name].write_bytes(response.data)
    return {"job": job, "files": files, "work": work, "scan": scan}


def test_job_ran_on_the_worker(finished_job):
    job = finished_job["job"]
    assert job["progress"] == 100 and job["input_kind"] == "dicom"
    assert len(job["weights_sha256"]) == 64
    stages = {stage for status, stage, _ in job["_seen"] if status == "running"}
    assert stages, "never saw the job running"
    for stage in ("queue", "ingest", "preprocess", "network", "export", "total"):
        assert stage in job["timings"], job["timings"]
    assert job["structures"] and all("volume_cm3" in s for s in job["structures"])


def test_rtstruct_passes_dciodvfy(finished_job):
    errors = dciodvfy_errors(finished_job["files"]["rtstruct.dcm"])
    assert not errors, "\n".join(errors)


def test_rtstruct_references_the_uploaded_series(finished_job, ct_only):
    rt = pydicom.dcmread(finished_job["files"]["rtstruct.dcm"])
    slices = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(ct_only.iterdir())]
    ct = slices[0]
    sop_uids = {s.SOPInstanceUID for s in slices}
    assert rt.Modality == "RTSTRUCT"
    assert rt.StudyInstanceUID == ct.StudyInstanceUID
    assert rt.PatientID == ct.PatientID
    (frame,) = rt.ReferencedFrameOfReferenceSequence
    assert frame.FrameOfReferenceUID == ct.FrameOfReferenceUID
    (study,) = frame.RTReferencedStudySequence
    assert study.ReferencedSOPInstanceUID == ct.StudyInstanceUID
    (series,) = study.RTReferencedSeriesSequence
    assert series.SeriesInstanceUID == ct.SeriesInstanceUID
    listed = {item.ReferencedSOPInstanceUID for item in series.ContourImageSequence}
    assert listed and listed <= sop_uids
    for roi in rt.ROIContourSequence:
        for contour in getattr(roi, "ContourSequence", []):
            for image in getattr(contour, "ContourImageSequence", []):
                assert image.ReferencedSOPInstanceUID in sop_uids
    for roi in rt.StructureSetROISequence:
        assert roi.ReferencedFrameOfReferenceUID == ct.FrameOfReferenceUID


def _on_grid(mask_image: nib.Nifti1Image, reference: nib.Nifti1Image) -> np.ndarray:
    """``mask_image`` resampled (nearest neighbour, in physical space) onto ``reference``'s grid."""
    if mask_image.shape[:3] == reference.shape[:3] and np.allclose(mask_image.affine, reference.affine, atol=1e-3):
        return np.asarray(mask_image.dataobj)[..., 0] if mask_image.ndim == 4 else np.asarray(mask_image.dataobj)
    ijk = np.indices(reference.shape[:3]).reshape(3, -1)
    world = reference.affine @ np.vstack([ijk, np.ones(ijk.shape[1])])
    source = np.linalg.inv(mask_image.affine) @ world
    data = np.asarray(mask_image.dataobj).astype(np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    values = map_coordinates(data, source[:3], order=0, mode="constant", cval=0)
    return values.reshape(reference.shape[:3])


def test_rtstruct_matches_the_label_map(finished_job, ct_only):
    require(shutil.which("plastimatch") is not None, "plastimatch is not installed")
    out = finished_job["work"] / "plastimatch"
    result = subprocess.run(
        [
            "plastimatch",
            "convert",
            "--input",
            str(finished_job["files"]["rtstruct.dcm"]),
            "--referenced-ct",
            str(ct_only),
            "--output-prefix",
            str(out),
            "--prefix-format",
            "nii.gz",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    labels = nib.load(finished_job["files"]["labels.nii.gz"])
    label_array = np.asarray(labels.dataobj)
    scores = {}
    for structure in finished_job["job"]["structures"]:
        ours = label_array == structure["label"]
        path = out / f"{structure['name']}.nii.gz"
        if not ours.any():
            assert not path.exists() or not np.asarray(nib.load(path).dataobj).any(), structure["name"]
            continue
        assert path.exists(), (
            f"{structure['name']} missing from the RTSTRUCT; plastimatch wrote {sorted(out.iterdir())}"
        )
        theirs = _on_grid(nib.load(path), labels) > 0
        scores[structure["name"]] = 2 * np.sum(ours & theirs) / (ours.sum() + theirs.sum())
    assert scores, "no structure was delineated"
    low = {name: round(float(d), 4) for name, d in scores.items() if d < DICE_MIN}
    assert not low, f"Dice below {DICE_MIN}: {low} (all: { {k: round(float(v), 4) for k, v in scores.items()} })"
