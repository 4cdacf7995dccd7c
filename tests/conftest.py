"""Shared fixtures. Personas: Alice owns the data; Bob is another user and must get 404
(unless a test puts him in Alice's team and she shares with it); Charlie never shares a
team with Alice and must get 404 on everything of hers."""

from __future__ import annotations

import json
import sys
import types
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from tests import factories
from tests.workflow import propagate, rtstruct_uid, upload
from webapp.celery import app as celery_app
from webapp.delineation import engine_client

pytest_plugins = ["tests.dicom_results"]

FAKE_STRUCTURES = [
    {"label": 1, "name": "Brainstem", "color": [255, 170, 0]},
    {"label": 2, "name": "Mandible", "color": [230, 230, 230]},
]


def write_fake_structures(out_dir: Path, labels: np.ndarray, affine: np.ndarray, masks: bool = True) -> list[dict]:
    """``structures.json`` of ``FAKE_STRUCTURES`` in ``labels`` (I, J, K) with each volume in
    cm3 (the fakes' voxels are 2 x 2 x 3 mm) and, with ``masks``, ``structures/<name>.nii.gz``
    as the engine writes them; returns the table."""
    table = []
    if masks:
        (out_dir / "structures").mkdir()
    for s in FAKE_STRUCTURES:
        mask = (labels == s["label"]).astype(np.uint8)
        if masks:
            nib.save(nib.Nifti1Image(mask, affine), out_dir / "structures" / f"{s['name']}.nii.gz")
        table.append({**s, "volume_cm3": round(float(mask.sum()) * 12.0 / 1000, 3)})
    (out_dir / "structures.json").write_text(json.dumps(table))
    return table


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path) -> Path:
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = root
    return root


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test starts with an empty cache: the sign-in throttles count attempts there."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """MD5 for the test users' passwords: the default PBKDF2 costs about a second per user on
    the CI's two cores, and no test here is about the hash's strength (Django's own advice)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def eager_celery():
    """Tasks run in-process when the transaction commits; anything sent by mistake goes
    to an in-memory broker, never to var/ or a real server."""
    previous = (celery_app.conf.task_always_eager, celery_app.conf.broker_url)
    # Settings come from Django with the CELERY_ namespace: set the namespaced keys.
    celery_app.conf.update(CELERY_TASK_ALWAYS_EAGER=True, CELERY_BROKER_URL="memory://")
    yield
    celery_app.conf.update(CELERY_TASK_ALWAYS_EAGER=previous[0], CELERY_BROKER_URL=previous[1])


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="alice-password-123")


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", password="bob-password-123")


@pytest.fixture
def charlie(django_user_model):
    return django_user_model.objects.create_user("charlie", password="charlie-password-123")


def _client(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def alice_api(alice) -> APIClient:
    return _client(alice)


@pytest.fixture
def bob_api(bob) -> APIClient:
    return _client(bob)


@pytest.fixture
def charlie_api(charlie) -> APIClient:
    return _client(charlie)


@pytest.fixture
def anon_api() -> APIClient:
    return APIClient()


@pytest.fixture
def nifti_upload():
    return SimpleUploadedFile("ct.nii.gz", factories.nifti_bytes(), content_type="application/gzip")


@pytest.fixture
def dicom_zip(tmp_path) -> bytes:
    return factories.dicom_zip_bytes(tmp_path / "series")


def fake_segmentation(
    input_path: Path, model_name: str, out_dir: Path, progress=None, series=None
) -> engine_client.EngineResult:
    """Stands in for the engine: writes the documented outputs for a 20x24x10 grid."""
    report = progress or (lambda stage, pct: None)
    out_dir = Path(out_dir)
    report("ingest", 0)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    image = np.full((20, 24, 10), -1000, dtype=np.int16)
    image[4:16, 4:20, 2:8] = 40
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[6:10, 6:12, 3:6] = 1
    labels[12:15, 14:18, 4:7] = 2
    report("preprocess", 10)
    report("network", 20)
    report("export", 75)
    nib.save(nib.Nifti1Image(image, affine), out_dir / "image.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), out_dir / "labels.nii.gz")
    table = write_fake_structures(out_dir, labels, affine)
    is_dicom = not str(input_path).lower().endswith((".nii", ".nii.gz"))
    # As the engine: RTSTRUCT (after its round-trip check) and SEG for every input; for
    # NIfTI input they reference the CT exported as DICOM (ct_dicom.zip).
    ct_dicom_zip = None
    if not is_dicom:
        ct_dicom_zip = out_dir / "ct_dicom.zip"
        with zipfile.ZipFile(ct_dicom_zip, "w") as zf:
            zf.writestr("ct_dicom/CT0000.dcm", b"\0" * 128 + b"DICM fake")
    rtstruct, seg = out_dir / "rtstruct.dcm", out_dir / "seg.dcm"
    rtstruct.write_bytes(b"\0" * 128 + b"DICM fake")
    seg.write_bytes(b"\0" * 128 + b"DICM fake seg")
    roundtrip = {s["name"]: 0.99 + 0.005 * s["label"] for s in FAKE_STRUCTURES}
    (out_dir / "rtstruct_check.json").write_text(
        json.dumps({"min_dice": min(roundtrip.values()), "threshold": 0.98, "structures": roundtrip})
    )
    report("done", 100)
    return engine_client.EngineResult(
        structures=table,
        timings_s={"ingest": 0.1, "preprocess": 0.2, "network": 0.3, "export": 0.4},
        input_kind="dicom" if is_dicom else "nifti",
        model_name=model_name,
        weights_sha256="ab" * 32,
        rtstruct_roundtrip=roundtrip,
    )


def get_export(api, url: str, capture):
    """GET a file the worker writes after its job (``webapp.delineation.exports``): the
    first request queues it (202), the eager task writes it when the request's transaction
    commits (``capture``: pytest-django's ``django_capture_on_commit_callbacks``), and the
    next request downloads it."""
    with capture(execute=True):
        first = api.get(url)
    return api.get(url) if first.status_code == 202 else first


@pytest.fixture
def exports_at_once(monkeypatch):
    """The exports a request queues (``webapp.delineation.exports``) written at once, as the
    worker would: for tests of what they hold rather than of their queueing."""
    from webapp.delineation import exports, tasks

    monkeypatch.setattr(tasks, "submit_export", exports.run)


@pytest.fixture
def fake_engine(monkeypatch):
    """The engine replaced by ``fake_segmentation``; one shipped model, ``hn-oar``."""
    calls: list[dict] = []

    def run(input_path, model_name, out_dir, progress=None, series=None):
        calls.append(
            {"input_path": Path(input_path), "model_name": model_name, "out_dir": Path(out_dir), "series": series}
        )
        return fake_segmentation(input_path, model_name, out_dir, progress, series)

    monkeypatch.setattr(engine_client, "available_models", lambda: ["hn-oar"])
    monkeypatch.setattr(engine_client, "run_segmentation", run)
    return calls


@pytest.fixture
def alice_scan(alice_api, nifti_upload):
    response = alice_api.post("/api/scans/", {"file": nifti_upload}, format="multipart")
    assert response.status_code == 201, response.content
    return response.json()


@pytest.fixture
def alice_dicom_scan(alice_api, dicom_zip):
    upload = SimpleUploadedFile("series.zip", dicom_zip, content_type="application/zip")
    response = alice_api.post("/api/scans/", {"file": upload}, format="multipart")
    assert response.status_code == 201, response.content
    return response.json()


@pytest.fixture
def alice_job(alice_api, alice_dicom_scan, fake_engine, django_capture_on_commit_callbacks):
    """A succeeded job of Alice on a DICOM scan (fake engine, run eagerly)."""
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_api.post("/api/jobs/", {"scan": alice_dicom_scan["id"], "model": "hn-oar"}, format="json")
    assert response.status_code == 201, response.content
    job = alice_api.get(f"/api/jobs/{response.json()['id']}/").json()
    assert job["status"] == "succeeded", job
    return job


# --- Contour propagation (engine.infer.propagate, issue 5) -------------------------------

FAKE_PROPAGATION_MODELS = ["rigid", "elastix-bspline", "dual-head"]
# The contract's report.json of fake_propagate_files for a model that segments (dual-head).
FAKE_PROPAGATION_REPORT = {
    "model": "dual-head",
    "structures": [
        {
            "name": "Brainstem",
            "label": 1,
            "volume_ml": 1.44,
            "dice_vs_direct": 0.75,
            "msd_mm_vs_direct": 1.9,
            "hd95_mm_vs_direct": 2.0,
            "folding_percent_inside": 0.0,
            "warning": "The propagated and the direct contours disagree (Dice 0.75).",
        },
        {
            "name": "Mandible",
            "label": 2,
            "volume_ml": 2.4,
            "dice_vs_direct": 1.0,
            "msd_mm_vs_direct": 0.0,
            "hd95_mm_vs_direct": 0.0,
            "folding_percent_inside": 1.5,
            "warning": "The deformation folds in 1.5 % of the structure.",
        },
    ],
    "folding_percent": 0.2,
    "timings": {"ingest": 0.1, "register": 0.5, "export": 0.2},
}


def fake_propagation_masks(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(propagated, direct) label maps of fake_propagate_files: Brainstem (1) differs by a
    shift of one voxel along I, Mandible (2) is the same in both."""
    propagated = np.zeros(shape, dtype=np.uint8)
    propagated[4:8, 4:9, 2:5] = 1
    propagated[9:13, 8:13, 3:6] = 2
    direct = np.zeros(shape, dtype=np.uint8)
    direct[5:9, 4:9, 2:5] = 1
    direct[9:13, 8:13, 3:6] = 2
    return propagated, direct


def fake_propagate_files(fixed, moving, contours, model, out_dir, progress=None) -> dict:
    """Stands in for ``engine.infer.propagate.propagate_files``: writes the contract's files
    on the grid of the fixed (daily) scan as the engine reads it (image.nii.gz, ddf.nii.gz, labels.nii.gz,
    structures.json, structures/, rtstruct.dcm, report.json; direct_labels.nii.gz for the
    model that segments, dual-head). Refuses contours that are neither an RTSTRUCT nor a
    labels.nii.gz + structures.json folder, as the engine would (InputError)."""
    from engine.errors import InputError
    from engine.io.reader import read_input

    report = progress or (lambda stage, pct: None)
    out_dir = Path(out_dir)
    report("ingest", 0)
    contours = Path(contours)
    if contours.is_dir():
        if not ((contours / "labels.nii.gz").exists() and (contours / "structures.json").exists()):
            raise InputError("the contours folder holds no labels.nii.gz with structures.json")
    elif pydicom.dcmread(contours).Modality != "RTSTRUCT":
        raise InputError("the contours file is not an RTSTRUCT")
    volume, _ = read_input(Path(fixed))
    image = volume.array.astype(np.int16)  # the factories write whole HU values
    nib.save(nib.Nifti1Image(image, volume.affine), out_dir / "image.nii.gz")
    propagated, direct = fake_propagation_masks(volume.array.shape)
    report("register", 30)
    nib.save(nib.Nifti1Image(np.zeros((*volume.array.shape, 3), np.float32), volume.affine), out_dir / "ddf.nii.gz")
    nib.save(nib.Nifti1Image(propagated, volume.affine), out_dir / "labels.nii.gz")
    if model == "dual-head":
        nib.save(nib.Nifti1Image(direct, volume.affine), out_dir / "direct_labels.nii.gz")
    write_fake_structures(out_dir, propagated, volume.affine)
    (out_dir / "rtstruct.dcm").write_bytes(b"\0" * 128 + b"DICM fake")
    document = dict(FAKE_PROPAGATION_REPORT, model=model)
    if model != "dual-head":  # a registration only: nothing to compare with
        document["structures"] = [
            {**s, "dice_vs_direct": None, "msd_mm_vs_direct": None, "hd95_mm_vs_direct": None, "warning": None}
            for s in FAKE_PROPAGATION_REPORT["structures"]
        ]
    (out_dir / "report.json").write_text(json.dumps(document))
    report("done", 100)
    return document


@pytest.fixture
def fake_propagation(monkeypatch):
    """``engine.infer.propagate`` replaced by a module with ``fake_propagate_files``, and the
    propagation methods by ``FAKE_PROPAGATION_MODELS``; returns the calls (fixed, moving, contours and, for an
    RTSTRUCT, its ROI names, model)."""
    calls: list[dict] = []

    def propagate_files(fixed, moving, contours, model, out_dir, progress=None):
        contours = Path(contours)
        rois = None if contours.is_dir() else [r.ROIName for r in pydicom.dcmread(contours).StructureSetROISequence]
        calls.append({"fixed": Path(fixed), "moving": Path(moving), "contours": contours, "rois": rois, "model": model})
        return fake_propagate_files(fixed, moving, contours, model, out_dir, progress)

    module = types.ModuleType("engine.infer.propagate")
    module.propagate_files = propagate_files
    monkeypatch.setitem(sys.modules, "engine.infer.propagate", module)
    monkeypatch.setattr(engine_client, "propagation_models", lambda: list(FAKE_PROPAGATION_MODELS))
    return calls


def segment_on_the_series_grid(input_path, model_name, out_dir, progress=None, series=None):
    """Stands in for ``engine_client.run_segmentation``: Brainstem and Mandible (the
    propagated label map of ``fake_propagation_masks``) on the uploaded series' own grid,
    so that a revision's RTSTRUCT and SEG can be written for real on that series."""
    from engine.io.reader import read_input

    volume, _ = read_input(Path(input_path))
    labels, _ = fake_propagation_masks(volume.array.shape)
    out_dir = Path(out_dir)
    nib.save(nib.Nifti1Image(np.zeros(labels.shape, np.int16), volume.affine), out_dir / "image.nii.gz")
    nib.save(nib.Nifti1Image(labels, volume.affine), out_dir / "labels.nii.gz")
    table = write_fake_structures(out_dir, labels, volume.affine, masks=False)
    (out_dir / "rtstruct.dcm").write_bytes(b"\0" * 128 + b"DICM the model's own")
    (out_dir / "seg.dcm").write_bytes(b"\0" * 128 + b"DICM the model's own SEG")
    return engine_client.EngineResult(
        structures=table, timings_s={}, input_kind="dicom", model_name=model_name, weights_sha256="cd" * 32
    )


@pytest.fixture
def planning(alice_api, tmp_path) -> dict:
    """Alice's planning CT with its RTSTRUCT (Brainstem, Mandible), Patient ID PHANTOM1."""
    return upload(
        alice_api, factories.dicom_zip_with_rtstruct(tmp_path / "planning", ("Brainstem", "Mandible")), "p.zip"
    )


@pytest.fixture
def daily(alice_api, tmp_path) -> dict:
    """Alice's daily CT of the same patient (PHANTOM1)."""
    return upload(alice_api, factories.dicom_zip_bytes(tmp_path / "daily"), "daily.zip")


@pytest.fixture
def alice_propagation(alice_api, planning, daily, fake_propagation, django_capture_on_commit_callbacks) -> dict:
    """A succeeded dual-head propagation of the planning RTSTRUCT onto the daily scan."""
    response = propagate(
        alice_api,
        daily["id"],
        planning["id"],
        django_capture_on_commit_callbacks,
        contours_rtstruct=rtstruct_uid(planning),
    )
    assert response.status_code == 201, response.content
    job = alice_api.get(f"/api/jobs/{response.json()['id']}/").json()
    assert job["status"] == "succeeded", job
    return job
