"""Real data: contour propagation through the CLI onto a daily scan with a known truth,
and its golden output.

The planning scan is OpenKBP test case pt_104 (CT and its organ contours); the daily
scan is ``engine.train.synthetic_deformation.make_pair`` of it (seed 0: a smooth field of 8 mm
at most, a rigid motion of up to 2 degrees and 4 mm, 20 HU of noise), so the true
contours on the daily scan and the true displacement are known.

For the shipped joint model chosen as best (``docs/joint-models.md``) and for the best
classical method, ``python -m engine propagate`` must

* reproduce its golden label map ``tests/golden/propagate_METHOD_pt_104.nii.gz``
  (Dice > 0.99 per structure), so a change of weights, pre-alignment or warping shows;
* do better than copying the contours without registration: a higher mean Dice against
  the true daily contours and a lower mean displacement error in the body.

After retraining or changing a method, regenerate its golden file with
``DELINEO_WRITE_GOLDEN=1 pytest tests/realdata/test_propagate_real.py`` and say why in
the commit.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.infer.body import BODY_HU
from engine.infer.displacement import Grid, warp_labels
from engine.io.nifti import (
    read_displacement_field,
    read_labels,
    read_volume,
    write_nifti,
)
from engine.metrics import surface_metrics
from engine.models.registry import model_config
from engine.train.synthetic_deformation import make_pair
from engine.volume import LabelMap, Volume
from tests.stack import REPO, data_dir, engine_cli

GOLDEN = REPO / "tests" / "golden"
CASE = "pt_104"
BEST_JOINT_MODEL = "dual-head"


@pytest.fixture(scope="module")
def daily_pair(tmp_path_factory):
    """(folder with planning.nii.gz, daily.nii.gz and contours/, truth LabelMap, true
    DDF (I, J, K, 3) mm RAS, the daily Volume, the structures)."""
    case = data_dir("openkbp", CASE)
    planning = read_volume(case / "ct.nii.gz")
    labels = read_labels(case / "oar_labelmap.nii.gz")
    present = set(np.unique(labels.array)) - {0}
    structures = [s for s in model_config("hn-oar")["structures"] if s["label"] in present]
    values = [s["label"] for s in structures]
    pair = make_pair(planning, labels, values, seed=0)
    folder = tmp_path_factory.mktemp("propagate-real")
    shutil.copy(case / "ct.nii.gz", folder / "planning.nii.gz")
    daily_hu = np.clip(np.rint(pair.daily.array), -32768, 32767).astype(np.int16)
    write_nifti(Volume(daily_hu, pair.daily.affine), folder / "daily.nii.gz")
    (folder / "contours").mkdir()
    write_nifti(labels, folder / "contours" / "labels.nii.gz")
    entries = [{"label": s["label"], "name": s["name"], "color": list(s["color"])} for s in structures]
    (folder / "contours" / "structures.json").write_text(json.dumps(entries))
    return folder, pair.daily_labels, pair.ddf_mm, pair.daily, structures


def _mean_dice(labels: np.ndarray, truth: LabelMap, spacing, structures) -> float:
    return float(
        np.mean([surface_metrics(labels == s["label"], truth.array == s["label"], spacing)[0] for s in structures])
    )


@pytest.mark.parametrize("method", [BEST_JOINT_MODEL, "elastix-bspline"])
def test_propagation_matches_its_golden_output_and_beats_no_registration(tmp_path, daily_pair, method):
    folder, truth, true_ddf, daily, structures = daily_pair
    out = tmp_path / "out"
    result = engine_cli(
        "propagate",
        "--fixed",
        str(folder / "daily.nii.gz"),
        "--moving",
        str(folder / "planning.nii.gz"),
        "--contours",
        str(folder / "contours"),
        "--model",
        method,
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ours = read_labels(out / "labels.nii.gz")
    golden_path = GOLDEN / f"propagate_{method}_{CASE}.nii.gz"
    if os.environ.get("DELINEO_WRITE_GOLDEN") == "1":
        shutil.copy(out / "labels.nii.gz", golden_path)
    golden = read_labels(golden_path)
    np.testing.assert_allclose(ours.affine, golden.affine, atol=1e-4)
    for s in structures:
        a, b = ours.array == s["label"], golden.array == s["label"]
        dice = 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)
        assert dice > 0.99, f"{s['name']}: Dice {dice:.4f} against the golden output"

    grid = Grid(tuple(daily.array.shape), np.asarray(daily.affine, dtype=float))
    zero = np.zeros((*daily.array.shape, 3), np.float32)
    copied = warp_labels(
        read_labels(folder / "contours" / "labels.nii.gz"),
        [s["label"] for s in structures],
        grid,
        zero,
    )
    dice = _mean_dice(ours.array, truth, daily.spacing, structures)
    dice_none = _mean_dice(copied, truth, daily.spacing, structures)
    assert dice > dice_none + 0.05, (dice, dice_none)

    ddf, affine = read_displacement_field(out / "ddf.nii.gz")
    np.testing.assert_allclose(affine, daily.affine, atol=1e-4)
    body = daily.array > BODY_HU
    error = np.linalg.norm(ddf - true_ddf, axis=-1)[body].mean()
    before = np.linalg.norm(true_ddf, axis=-1)[body].mean()
    assert error < 0.75 * before, (error, before)
    report = json.loads((out / "report.json").read_text())
    assert report["folding_percent"] < 0.1


def test_golden_files_name_a_shipped_method():
    from engine.infer.propagate import PROPAGATION_MODELS

    for path in GOLDEN.glob("propagate_*.nii.gz"):
        method = path.name.removeprefix("propagate_").rsplit(f"_{CASE}", 1)[0]
        assert method in PROPAGATION_MODELS(), f"{path.name}: {method} is not shipped"
    assert Path(GOLDEN / f"propagate_{BEST_JOINT_MODEL}_{CASE}.nii.gz").exists()
