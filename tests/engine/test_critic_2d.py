"""The audit's 2D critic (engine.infer.critic, engine.train.critic_2d): the window it
looks through, the crops it learns from, its scores, and a short run that calibrates it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.infer.critic import Critic, axial_crops, contour_window, load_critic, qam_score
from engine.models.qam import QualityAwarenessModule
from engine.models.registry import build_network, load_model
from engine.train.critic_2d import (
    contour_crops,
    corrupt_contour,
    relative_to_image,
    roc_auc,
    score_contours,
    unpack_bits,
)
from engine.train.experiment import make_trainer
from engine.train.label_noise import corrupt_masks
from engine.train.publish import attach_critic, publish
from tests.engine.test_experiment_runs import STRUCTURES, _tiny_openkbp


def _box(shape=(40, 40, 20)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[10:20, 24:36, 5:9] = 1
    return mask


def test_the_window_is_centred_on_the_whole_contour_and_covers_its_slices():
    centre, slices = contour_window(_box())
    assert np.allclose(centre, [14.5, 29.5]) and slices.tolist() == [5, 6, 7, 8]
    image = np.arange(40 * 40 * 20, dtype=np.float32).reshape(40, 40, 20)
    images, masks = axial_crops(image, _box(), 16)
    assert images.shape == masks.shape == (4, 16, 16)
    # The crop's centre pixel is the contour's in-plane centre (rounded as Python rounds).
    assert images[0, 8, 8] == image[round(14.5), round(29.5), 5] and masks.all(axis=0)[8, 8]
    # Zero-padded beyond the image: a 24-pixel window reaches y = 18..41, past y = 39.
    wide, _ = axial_crops(image, _box(), 24)
    assert (wide[:, :, -2:] == 0).all() and (wide[:, :, :-2] > 0).all()


def test_crops_carry_every_structure_of_the_case_in_bits():
    masks = np.zeros((2, 40, 40, 20), np.uint8)
    masks[0] = _box()
    masks[1, 12:16, 26:30, 6] = 1
    case = {"case": "a", "image": np.ones((40, 40, 20), np.float16), "masks": masks, "available": [True, True]}
    crops = contour_crops([case], 16)
    # Four slices around structure 0, one around structure 1.
    assert crops["structure"].tolist() == [0, 0, 0, 0, 1]
    unpacked = unpack_bits(crops["bits"], 2)
    assert unpacked.shape == (5, 2, 16, 16)
    assert unpacked[1, 1].sum() == 16 and unpacked[0, 1].sum() == 0  # slice 6 holds structure 1
    assert (unpacked[:4, 0].sum(axis=(1, 2)) == 10 * 12).all()  # the whole contour fits the crop


def test_corrupting_in_the_contours_box_equals_corrupting_the_whole_grid():
    mask = _box((60, 60, 30))
    for seed in range(6):
        whole = corrupt_masks(mask[None], (3.5, 3.5, 2.5), (5.0, 13.0), np.random.default_rng(seed))[0][0]
        boxed = corrupt_contour(mask, [3.5, 3.5, 2.5], (5.0, 13.0), np.random.default_rng(seed))
        assert np.array_equal(whole, boxed)


def test_a_2d_critic_scores_the_mean_over_the_contours_slices_within_lambda():
    torch.manual_seed(0)
    critic = Critic(QualityAwarenessModule(3, channels=(4, 8), spatial_dims=2).eval(), 1.5, 16, 0.0, "", 1.0, 2)
    image = np.random.default_rng(0).random((40, 40, 20)).astype(np.float32)
    score = qam_score(critic, image, _box(), 1, 2)
    assert -1.5 <= score <= 1.5
    images, masks = axial_crops(image, _box(), 16)
    x = np.zeros((4, 3, 16, 16), np.float32)
    x[:, 0], x[:, 2] = images, masks
    with torch.no_grad():
        expected = float((1.5 * torch.tanh(critic.network(torch.as_tensor(x)))).mean())
    assert score == pytest.approx(expected, abs=1e-6)


def test_the_critic_sees_losses_relative_to_their_image_so_image_difficulty_cannot_rank():
    # Image 0 is hard (a thin organ), image 1 easy; in both the corrupted copy fits worse.
    clean, corrupted = torch.tensor([0.9, 0.1]), torch.tensor([1.0, 0.4])
    relative = relative_to_image(clean, corrupted)
    assert torch.allclose(relative, torch.tensor([-0.05, -0.15, 0.05, 0.15]))
    # Every clean copy is below every corrupted one, though raw, image 1's corrupted copy
    # (0.4) fits better than image 0's clean one (0.9).
    assert relative[:2].max() < relative[2:].min()


def test_roc_auc_is_one_when_every_clean_contour_scores_above_every_corrupted_one():
    rows = [{"clean": 1.0 + i, "small": 0.5, "large": None, "structure": 0} for i in range(3)]
    assert roc_auc(rows) == 1.0
    rows.append({"clean": 0.0, "small": 0.5, "large": 0.7, "structure": 0})
    assert roc_auc(rows) < 1.0


def test_every_check_is_scored_on_the_same_corrupted_contours():
    mask = np.zeros((60, 60, 40), np.uint8)
    mask[15:45, 15:45, 10:30] = 1  # 105 x 105 x 50 mm: erosion by 13 mm leaves some
    case = {
        "case": "pt_1",
        "image": np.zeros(mask.shape, np.float16),
        "masks": mask[None],
        "available": np.array([True]),
    }
    seen: dict[str, list[np.ndarray]] = {"a": [], "b": []}

    def check(name):
        def score(k, image, contour, c):
            seen[name].append(contour.copy())
            return float(contour.sum())

        return score

    rows = score_contours(check("a"), [case], [3.5, 3.5, 2.5], seed=1)
    score_contours(check("b"), [case], [3.5, 3.5, 2.5], seed=1)
    assert len(seen["a"]) == 3 and all((x == y).all() for x, y in zip(seen["a"], seen["b"], strict=True))
    assert rows[0]["clean"] == mask.sum() and rows[0]["large"] != mask.sum()


def test_a_short_critic_run_logs_both_weights_and_writes_its_calibration(tmp_path):
    data = _tiny_openkbp(tmp_path / "data")
    config = {
        "name": "critic",
        "kind": "critic2d",
        "model": {
            "architecture": "ResSEUNet",
            "channels": [4, 8, 8],
            "spacing_mm": [4.0, 4.0, 4.0],
            "axcodes": "RAS",
            "window_hu": [-200.0, 1200.0],
            "structures": STRUCTURES,
        },
        "training": {"steps": 20, "batch": 8, "patch": 16, "lr": 1e-2, "val_every": 10},
        "qam": {"lambda": 2.0, "lr": 1e-3, "corrupt_copies": "both", "channels": [4, 8]},
    }
    path = tmp_path / "critic.json"
    path.write_text(json.dumps(config))
    metrics = make_trainer(path, data, tmp_path / "runs").run_training()
    out = tmp_path / "runs" / "critic"
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "weight_clean" in r]
    assert steps and all(r["weight_clean"] > 0 and r["weight_corrupted"] > 0 for r in steps)
    assert [r["step"] for r in records if "val" in r] == [10, 20]
    calibration = json.loads((out / "qam_auc.json").read_text())
    assert calibration["spatial_dims"] == 2 and calibration["structures"] == [s["name"] for s in STRUCTURES]
    assert 0.0 <= calibration["roc_auc_test"]["both"] <= 1.0
    assert metrics["evaluation"]["roc_auc_test"] == calibration["roc_auc_test"]

    # Attached to a model with the same structures, the audit loads it as a 2D critic;
    # a re-publish of the model keeps it; a model of other structures refuses it.
    weights = tmp_path / "weights"
    run = tmp_path / "runs" / "seg"
    run.mkdir()
    seg_config = dict(config["model"], roi_size=[32, 32, 32], threshold=0.5)
    (run / "config.json").write_text(json.dumps(seg_config))
    (run / "log.jsonl").write_text("")
    torch.save(build_network(seg_config).state_dict(), run / "best.pt")
    training = {k: "tiny" for k in ("data", "split", "command", "procedure", "hardware")}
    publish(run, "tiny", training, weights)
    attach_critic("tiny", out, weights)
    publish(run, "tiny", training, weights)
    model = load_model("tiny", weights, torch.device("cpu"))
    critic = load_critic(model, weights)
    assert critic.spatial_dims == 2 and critic.auc == calibration["roc_auc_test"]["both"]
    assert critic.threshold == calibration["threshold_val"]
    assert "axial slice" in (weights / "tiny.md").read_text()
    (run / "config.json").write_text(json.dumps(dict(seg_config, structures=STRUCTURES[::-1])))
    publish(run, "swapped", training, weights)
    with pytest.raises(ValueError, match="label channels would not match"):
        attach_critic("swapped", out, weights)


def test_a_critic_run_without_corrupt_copies_is_refused(tmp_path):
    from engine.train.config import TrainingConfigError, check_segmentation_config

    config = {"name": "c", "kind": "critic2d", "model": {"channels": [4, 8]}, "training": {"patch": 16}}
    with pytest.raises(TrainingConfigError, match="qam.corrupt_copies"):
        check_segmentation_config(config)
