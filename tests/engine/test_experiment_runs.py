"""Config-file training runs (python -m engine train CONFIG) on a tiny generated OpenKBP-like set."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from engine.train.config import TrainingConfigError, load_segmentation_config
from engine.train.experiment import run

STRUCTURES = [
    {
        "label": 1,
        "name": "PTV70",
        "source": "PTV70",
        "color": [255, 0, 0],
        "type": "PTV",
    },
    {
        "label": 2,
        "name": "Mandible",
        "source": "Mandible",
        "color": [230, 230, 230],
        "type": "ORGAN",
    },
]


def _tiny_openkbp(root: Path, n_train: int = 6) -> Path:
    """Cases of 32^3 voxels (4 mm): a bright box (PTV70) and a ring (Mandible) on noise."""
    rng = np.random.default_rng(0)
    splits = {"train": [], "val": [], "test": []}
    cases = []
    for i in range(n_train + 4):
        case = f"pt_{i}"
        split = "train" if i < n_train else ("val" if i < n_train + 2 else "test")
        splits[split].append(case)
        affine = np.diag([4.0, 4.0, 4.0, 1.0])
        ct = rng.normal(0, 20, (32, 32, 32)).astype(np.int16)
        ptv = np.zeros((32, 32, 32), np.uint8)
        c = rng.integers(10, 22, size=3)
        ptv[c[0] - 5 : c[0] + 5, c[1] - 5 : c[1] + 5, c[2] - 5 : c[2] + 5] = 1
        ct[ptv > 0] += 300
        mandible = np.zeros_like(ptv)
        mandible[4:28, 2:6, 8:24] = 1
        ct[mandible > 0] += 1000
        (root / case).mkdir(parents=True)
        nib.save(nib.Nifti1Image(ct, affine), root / case / "ct.nii.gz")
        nib.save(nib.Nifti1Image(ptv, affine), root / case / "mask_PTV70.nii.gz")
        nib.save(nib.Nifti1Image(mandible, affine), root / case / "mask_Mandible.nii.gz")
        cases.append({"case": case, "rois": ["PTV70", "Mandible"]})
    (root / "split.json").write_text(json.dumps(splits))
    (root / "manifest.json").write_text(json.dumps({"oar_labels": {}, "rois": [], "cases": cases}))
    return root


def _config(path: Path, **extra) -> Path:
    config = {
        "name": path.stem,
        "model": {
            "architecture": "ResSEUNet",
            "channels": [4, 8, 8],
            "spacing_mm": [4.0, 4.0, 4.0],
            "axcodes": "RAS",
            "window_hu": [-200.0, 1200.0],
            "roi_size": [32, 32, 32],
            "threshold": 0.5,
            "structures": STRUCTURES,
        },
        "training": {"steps": 40, "patch": 16, "batch": 4, "lr": 1e-2, "val_every": 20},
    } | extra
    path.write_text(json.dumps(config))
    return path


def _losses(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_a_short_qam_ocm_run_lowers_the_loss_and_logs_the_weights(tmp_path):
    data = _tiny_openkbp(tmp_path / "data")
    config = _config(
        tmp_path / "qam.json",
        noise={"fraction": 0.5, "range": "large", "seed": 1},
        qam={"lambda": 2.0, "lr": 1e-3},
        training={"steps": 40, "patch": 32, "batch": 4, "lr": 1e-2, "val_every": 20},
    )
    metrics = run(config, data, tmp_path / "runs")
    out = tmp_path / "runs" / "qam"
    records = [r for r in _losses(out) if "loss" in r]
    assert records[-1]["loss"] < records[0]["loss"]
    assert all(r["weight_clean"] is not None and r["weight_corrupted"] is not None for r in records)
    assert metrics["corrupted_cases"] == 3
    assert set(json.loads((out / "corruption.json").read_text())) and (out / "qam_best.pt").exists()
    assert metrics["evaluation"]["split"] == "test" and metrics["evaluation"]["n_cases"] == 2
    for name in (
        "config.json",
        "metrics.json",
        "best.pt",
        "last.pt",
        "curve.html",
        "curve.png",
    ):
        assert (out / name).exists(), name


def test_plain_cyclic_ce_run_resumes_where_it_stopped(tmp_path):
    data = _tiny_openkbp(tmp_path / "data")
    config = _config(
        tmp_path / "plain.json",
        training={
            "steps": 20,
            "patch": 16,
            "batch": 2,
            "lr": 1e-2,
            "val_every": 20,
            "schedule": "cyclic",
            "loss": "ce",
        },
    )
    run(config, data, tmp_path / "runs")
    config = _config(
        tmp_path / "plain.json",
        training={
            "steps": 40,
            "patch": 16,
            "batch": 2,
            "lr": 1e-2,
            "val_every": 20,
            "schedule": "cyclic",
            "loss": "ce",
        },
    )
    run(config, data, tmp_path / "runs")
    steps = [r["step"] for r in _losses(tmp_path / "runs" / "plain") if "loss" in r]
    assert steps == [20, 40]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"training": {"schedule": "weekly"}}, "schedule"),
        ({"noise": {"fraction": 0.5, "range": "huge"}}, "noise.range"),
        ({"qam": {"lambda": 1.0}, "training": {"batch": 1}}, "batch"),
    ],
)
def test_bad_configs_are_refused_with_the_field_named(tmp_path, change, message):
    with pytest.raises(TrainingConfigError, match=message):
        load_segmentation_config(_config(tmp_path / "bad.json", **change))


def test_warm_start_copies_the_tensors_that_fit(tmp_path):
    import torch

    from engine.models.res_se_unet import ResSEUNet
    from engine.train.segmentation import warm_start

    source = ResSEUNet(1, 2, channels=(4, 8, 8))
    torch.save(source.state_dict(), tmp_path / "two.pt")
    wider = ResSEUNet(1, 3, channels=(4, 8, 8))
    copied = warm_start(wider, tmp_path / "two.pt")
    state, original = wider.state_dict(), source.state_dict()
    same = [k for k in original if state[k].shape == original[k].shape]
    output = [k for k in original if k not in same]
    assert output and copied == len(original)
    assert all(torch.equal(state[k], original[k]) for k in same)
    # The output layer (a transposed conv: out channels on dim 1, its bias on dim 0):
    # the two source structures keep their weights, the third is new.
    weight, bias = sorted(output, reverse=True)
    assert torch.equal(state[weight][:, :2], original[weight]) and state[weight].shape[1] == 3
    assert torch.equal(state[bias][:2], original[bias]) and state[bias].shape[0] == 3
    with pytest.raises(TrainingConfigError, match="does not exist"):
        warm_start(wider, tmp_path / "missing.pt")
