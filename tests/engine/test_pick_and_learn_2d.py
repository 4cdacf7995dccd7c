"""The 2D Pick-and-Learn experiment: pixel noise, the QAM's batch weighting, a short run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from engine.models.qam import QualityAwarenessModule, sample_weights
from engine.train.experiment import make_trainer
from engine.train.label_noise import RANGES_PX, corrupt_masks
from tests.engine.test_experiment_runs import STRUCTURES, _tiny_openkbp


def test_pixel_noise_moves_each_contour_by_a_whole_number_of_pixels():
    masks = np.zeros((2, 64, 64), np.uint8)
    masks[0, 20:40, 20:40] = 1
    masks[1, 5:15, 40:60] = 1
    rng = np.random.default_rng(3)
    for _ in range(10):
        noisy, record = corrupt_masks(masks, (1.0, 1.0), RANGES_PX["large"], rng, whole_units=True)
        assert len(record) == 2
        for r in record:
            assert r.radius_mm == int(r.radius_mm) and 5 <= r.radius_mm <= 13
            inside = masks[r.structure] > 0
            # The new border lies r pixels from the old one (a square grows by r on each side).
            if r.operation == "dilate":
                assert noisy[r.structure].sum() > inside.sum()
                assert noisy[r.structure][inside].all()
                far = ndimage.distance_transform_edt(~inside)
                assert far[noisy[r.structure] > 0].max() == pytest.approx(r.radius_mm, abs=0.5)
            else:
                assert noisy[r.structure].sum() < inside.sum()
                assert not noisy[r.structure][~inside].any()


def test_a_batch_of_sixteen_can_down_weight_every_corrupted_image():
    """With 16 samples the softmax can give 12 corrupted images little weight together,
    which two samples (sigma(s1 - s2)) never can; the OCM bounds the ratio by e^(2 lambda)."""
    scores = torch.tensor([3.0] * 4 + [-3.0] * 12)
    plain = sample_weights(scores, None)
    assert plain[:4].sum() > 0.99 and torch.isclose(plain.sum(), torch.tensor(1.0))
    bounded = sample_weights(scores, 1.0)
    assert bounded.max() / bounded.min() <= np.exp(2.0) + 1e-5
    # 12 of 16 images share under half the weight, each under half of uniform (1/16).
    assert bounded[4:].sum() < 0.5 and (16 * bounded[4:]).max() < 0.5


def test_the_2d_qam_gives_one_score_per_image():
    qam = QualityAwarenessModule(5, channels=(4, 8, 8, 8), spatial_dims=2)
    assert qam(torch.randn(16, 5, 64, 64)).shape == (16,)
    with pytest.raises(ValueError, match="spatial axes"):
        qam(torch.randn(2, 5, 8, 8, 8))


def test_a_short_2d_qam_ocm_run_lowers_the_loss_and_logs_both_weights(tmp_path):
    data = _tiny_openkbp(tmp_path / "data")
    config = {
        "name": "slices",
        "kind": "slices2d",
        "model": {
            "architecture": "ResSEUNet",
            "channels": [4, 8, 8],
            "window_hu": [-200.0, 1200.0],
            "structures": STRUCTURES,
        },
        "training": {"steps": 40, "batch": 16, "lr": 1e-2, "val_every": 20},
        "noise": {"fraction": 0.5, "range": "small", "seed": 0},
        "qam": {"lambda": 2.0, "lr": 1e-3},
    }
    path = tmp_path / "slices.json"
    path.write_text(json.dumps(config))
    trainer = make_trainer(path, data, tmp_path / "runs")
    metrics = trainer.run_training()
    out = Path(tmp_path / "runs" / "slices")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r for r in records if "loss" in r]
    assert losses[-1]["loss"] < losses[0]["loss"]
    assert all(r["weight_clean"] > 0 and r["weight_corrupted"] > 0 for r in losses)
    assert metrics["corrupted_images"] == round(0.5 * metrics["train_images"])
    assert metrics["evaluation"]["n_cases"] == 2
    assert set(metrics["evaluation"]["per_structure"]) == {"PTV70", "Mandible"}
    assert (out / "qam_best.pt").exists()


def _slice_config(tmp_path: Path, noise: dict) -> Path:
    config = {
        "name": "slices-mm",
        "kind": "slices2d",
        "model": {"architecture": "ResSEUNet", "channels": [4, 8, 8], "window_hu": [-200.0, 1200.0]},
        "training": {"steps": 2, "batch": 16, "val_every": 2},
        "noise": noise,
    }
    config["model"]["structures"] = STRUCTURES
    path = tmp_path / "slices-mm.json"
    path.write_text(json.dumps(config))
    return path


def test_noise_in_millimetres_uses_each_case_s_pixel_spacing(tmp_path):
    """The tiny cases have 4 mm pixels: a 5-13 mm radius is 1.25-3.25 pixels, not 5-13."""
    from engine.train.slices import load_slices

    data = _tiny_openkbp(tmp_path / "data")
    noise = {"fraction": 1.0, "range": "large", "seed": 0, "units": "mm"}
    trainer = make_trainer(_slice_config(tmp_path, noise), data, tmp_path / "runs")
    trainer.out.mkdir(parents=True)
    trainer.setup()
    np.testing.assert_array_equal(trainer.train_set["spacing"], 4.0)
    clean = load_slices(data, ["train"], STRUCTURES, [-200.0, 1200.0], trainer.out.parent / "cache-slices")
    record = json.loads((trainer.out / "corruption.json").read_text())
    done = [(int(i), d) for i, image in record.items() for d in image]
    assert done and all(5.0 <= d["radius_mm"] <= 13.0 for _, d in done)
    assert any(d["radius_mm"] != int(d["radius_mm"]) for _, d in done)  # uniform, not whole pixels
    for i, d in done:
        before = clean["masks"][i, d["structure"]] > 0
        after = trainer.train_set["masks"][i, d["structure"]] > 0
        if d["operation"] == "dilate":
            reach = ndimage.distance_transform_edt(~before, sampling=(4.0, 4.0))[after]
            assert reach.max() <= d["radius_mm"] and reach.max() > d["radius_mm"] - 4.0
        else:
            assert not after[~before].any()


def test_noise_units_other_than_pixels_or_millimetres_are_refused(tmp_path):
    from engine.train.config import TrainingConfigError

    data = _tiny_openkbp(tmp_path / "data")
    noise = {"fraction": 0.5, "range": "large", "seed": 0, "units": "cm"}
    with pytest.raises(TrainingConfigError, match="noise.units"):
        make_trainer(_slice_config(tmp_path, noise), data, tmp_path / "runs")
