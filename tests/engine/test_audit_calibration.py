"""Calibrating the contour audit (engine.train.audit_calibration): both checks on the same
contours through the audit's pipeline, per-structure standardisation on val, thresholds and
ROC AUCs, and the card record the audit reads."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from engine.models.card import ModelCard
from engine.models.registry import LoadedModel
from engine.train.audit_calibration import calibrate, checked_contours, clean_stats, combine, standardise
from engine.train.critic_2d import score_contours
from engine.train.publish import set_audit_calibration
from tests.engine.test_audit import _critic, _model
from tests.engine.test_experiment_runs import STRUCTURES, _tiny_openkbp


def _rows(structure: int, n: int, clean: float, distorted: float, spread: float, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "case": f"pt_{structure}_{i}",
            "structure": structure,
            "clean": clean + spread * rng.standard_normal(),
            "small": distorted + spread * rng.standard_normal(),
            "large": None if i == 0 else distorted + spread * rng.standard_normal(),  # eroded away once
        }
        for i in range(n)
    ]


def _checks(seed: int) -> dict[str, list[dict]]:
    """Structure 0 (PTV70): neither check separates; structure 1 (Mandible): the Dice does,
    the critic does not; every Mandible contour is checked by both."""
    return {
        "qam": _rows(0, 12, 0.0, 0.0, 1.0, seed) + _rows(1, 12, 0.3, 0.3, 0.5, seed + 1),
        "dice": _rows(0, 12, 0.5, 0.5, 0.2, seed + 2) + _rows(1, 12, 0.85, 0.45, 0.03, seed + 3),
    }


def test_scores_are_standardised_by_each_structures_clean_val_contours():
    rows = _rows(1, 10, 2.0, 0.0, 0.5, 0)
    stats = clean_stats(rows)
    z = standardise(rows, stats)
    assert np.mean([r["clean"] for r in z]) == pytest.approx(0.0, abs=1e-9)
    assert np.std([r["clean"] for r in z]) == pytest.approx(1.0)
    assert z[0]["large"] is None and all(r["small"] < 0 for r in z)
    assert standardise(rows, {}) == []


def test_combining_rows_of_different_contours_is_refused():
    a, b = _rows(1, 3, 1.0, 0.0, 0.1, 0), _rows(1, 3, 1.0, 0.0, 0.1, 0)
    b[1]["case"] = "pt_other"
    with pytest.raises(ValueError, match="rows of different contours"):
        combine(a, b)


def test_calibration_sets_each_structures_threshold_on_val_and_reports_test():
    result = calibrate(_checks(0), _checks(10), STRUCTURES)
    mandible, ptv = result["per_structure"]["Mandible"], result["per_structure"]["PTV70"]
    # The Dice separates the mandible's distorted contours, and carries the combined check.
    assert mandible["roc_auc_val"] > 0.95 and mandible["roc_auc_test"] > 0.95
    assert ptv["roc_auc_val"] < 0.8
    assert mandible["n_val"] == 12 and mandible["dice_mean"] == pytest.approx(0.85, abs=0.03)
    # The threshold: 10 % of the clean val contours score below it.
    clean = [r["clean"] for r in combine(*[standardise(v, clean_stats(v)) for v in _checks(0).values()])]
    mandible_clean = clean[12:]
    assert mandible["threshold_val"] == pytest.approx(np.quantile(mandible_clean, 0.1), abs=1e-4)
    assert mandible["test_at_threshold"]["corrupted_called_implausible"] > 0.9
    auc = result["roc_auc_test"]
    assert auc["combined"]["organs"] == mandible["roc_auc_test"] and auc["combined"]["all"] < auc["combined"]["organs"]
    assert set(auc) == {"combined", "qam", "dice"} and result["n_test_contours"] == 24


def test_a_structure_with_one_val_contour_gets_no_rule():
    val = {k: [r for r in rows if r["structure"] == 1 or r["case"] == "pt_0_0"] for k, rows in _checks(0).items()}
    assert set(calibrate(val, _checks(10), STRUCTURES)["per_structure"]) == {"Mandible"}


def test_an_unscoreable_clean_contour_has_no_row_and_each_case_is_distorted_on_its_own_spacing():
    mask = np.zeros((30, 30, 20), np.uint8)
    mask[10:20, 10:20, 5:15] = 1
    case = {"case": "pt_1", "image": np.zeros(mask.shape), "masks": mask[None], "available": np.array([True])}
    seen = []

    def record(k, image, contour, c):
        seen.append(int(contour.sum()))
        return float(contour.sum())

    score_contours(record, [case | {"spacing_mm": [1.0, 1.0, 1.0]}], [10.0, 10.0, 10.0], seed=1)
    fine = list(seen)
    seen.clear()
    score_contours(record, [case], [10.0, 10.0, 10.0], seed=1)
    assert fine[0] == seen[0] and fine[1:] != seen[1:]  # 2-13 mm is 0.2-1.3 voxels of 10 mm
    assert score_contours(lambda *a: None, [case], [1.0, 1.0, 1.0], seed=1) == []


@pytest.fixture()
def toy(tmp_path) -> tuple[LoadedModel, object]:
    data = _tiny_openkbp(tmp_path / "openkbp", n_train=0)
    model = _model()
    # 4 mm as the cases; the stand-in network's channel 0 is what is bright: the mandible (+1000 HU).
    model.config["spacing_mm"] = [4.0, 4.0, 4.0]
    model.config["structures"] = [STRUCTURES[1] | {"label": 1}, STRUCTURES[0] | {"label": 2}]
    return model, data


def test_both_checks_run_through_the_audits_pipeline_on_the_same_contours(toy):
    model, data = toy
    checked = checked_contours(model, _critic(), data, "val", seed=1)
    qam, dice = checked["qam"], checked["dice"]
    assert [(r["case"], r["structure"]) for r in qam] == [(r["case"], r["structure"]) for r in dice]
    assert len(qam) == 4  # two val cases, two structures each
    for q, d in zip(qam, dice, strict=True):
        assert [q[k] is None for k in ("small", "large")] == [d[k] is None for k in ("small", "large")]
        assert all(-2.0 <= q[k] <= 2.0 for k in ("clean", "small", "large") if q[k] is not None)
    # Dice on the CT grid with the model's label map: the physician's mandible is what the
    # stand-in delineates, a distorted copy less so (a radius under the 4 mm voxel may
    # change nothing); it delineates no PTV.
    mandible = [d for d in dice if d["structure"] == 0]
    assert all(d["clean"] > 0.95 and d["large"] < 0.95 for d in mandible)
    assert all(d["clean"] == 0.0 for d in dice if d["structure"] == 1)


def test_the_card_records_a_calibration_of_its_own_weights_only(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    card = ModelCard.load("hn-rt").data
    (weights / "hn-rt.json").write_text(json.dumps(card))
    shutil.copy(ModelCard.load("hn-rt").weights, weights / "hn-rt.pt")
    calibration = calibrate(_checks(0), _checks(10), STRUCTURES) | {
        "weights_sha256": card["card"]["weights_sha256"],
        "qam_sha256": card["qam"]["sha256"],
        "seed": 1,
        "command": "python -m engine calibrate-audit --model hn-rt",
    }
    with pytest.raises(ValueError, match="other weights"):
        set_audit_calibration("hn-rt", calibration | {"weights_sha256": "2" * 64}, weights)
    with pytest.raises(ValueError, match="another critic"):
        set_audit_calibration("hn-rt", calibration | {"qam_sha256": "2" * 64}, weights)
    set_audit_calibration("hn-rt", calibration, weights)
    stored = ModelCard.load("hn-rt", weights)
    rules = stored.audit_rules(card["card"]["weights_sha256"], card["qam"]["sha256"])
    assert set(rules) == {"Mandible", "PTV70"} and rules["Mandible"].acts and not rules["PTV70"].acts
    text = (weights / "hn-rt.md").read_text()
    assert "## Contour audit: the check it flags by" in text and "| Mandible |" in text
