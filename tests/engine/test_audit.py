"""The contour audit (engine.infer.audit): structure matching, the critic's patch, metrics
against the model's delineation, the combined check (engine.models.card.AuditRule) and the
flags a physician sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engine.infer.audit import AuditError, audit_volume, match_structures
from engine.infer.critic import Critic, crop_centred, qam_score
from engine.io.rtstruct_import import ImportedROI
from engine.models.card import AuditRule, ModelCard
from engine.models.qam import QualityAwarenessModule
from engine.models.registry import LoadedModel
from engine.volume import Volume


class BrightIsBone(nn.Module):
    """A stand-in network with a known answer: channel 0 is "voxel brighter than 0.5 on
    the windowed scale", channel 1 is never."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bone = 20.0 * (x - 0.5)
        return torch.cat([bone, torch.full_like(x, -20.0)], dim=1)


class BoneTwice(nn.Module):
    """Both channels are the bright voxels, channel 1 more probable: the label map gives
    every one of them to structure 1 (as a PTV over an organ)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([20.0 * (x - 0.5), 40.0 * (x - 0.5)], dim=1)


WEIGHTS_SHA, QAM_SHA = "0" * 64, "1" * 64


def _rule(name: str, val_auc: float = 0.9, test_auc: float = 0.91, threshold: float = -1.0, **stats) -> dict:
    """A card's audit rule; by default the critic's score barely counts (sd 100) and a
    sound contour's Dice is 0.9 +- 0.05."""
    values = {"qam_mean": 0.0, "qam_sd": 100.0, "dice_mean": 0.9, "dice_sd": 0.05} | stats
    return {name: values | {"threshold_val": threshold, "roc_auc_val": val_auc, "roc_auc_test": test_auc}}


def _audit(*rules: dict, weights: str = WEIGHTS_SHA, qam: str = QAM_SHA) -> dict:
    per = {}
    for rule in rules:
        per |= rule
    return {"weights_sha256": weights, "qam_sha256": qam, "per_structure": per}


def _model(audit: dict | None = None, network: nn.Module | None = None) -> LoadedModel:
    config = {
        "spacing_mm": [2.0, 2.0, 2.0],
        "window_hu": [-1000.0, 1500.0],
        "axcodes": "RAS",
        "roi_size": [32, 32, 32],
        "threshold": 0.5,
        "structures": [
            {"label": 1, "name": "Mandible", "source": "Mandible", "color": [1, 2, 3]},
            {
                "label": 2,
                "name": "Parotid_R",
                "source": "RightParotid",
                "color": [4, 5, 6],
            },
        ],
    }
    if audit is not None:
        config["audit"] = audit
    return LoadedModel("toy", (network or BrightIsBone()).eval(), config, WEIGHTS_SHA, torch.device("cpu"))


def _critic(threshold: float = 0.0, auc: float = 0.9) -> Critic:
    torch.manual_seed(0)
    return Critic(QualityAwarenessModule(3).eval(), 2.0, 32, threshold, QAM_SHA, auc)


def _ball(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def _roi(name: str, mask: np.ndarray) -> ImportedROI:
    return ImportedROI(1, name, "ORGAN", None, mask.astype(np.uint8), 1)


@pytest.fixture()
def ct() -> Volume:
    shape = (40, 40, 40)
    array = np.full(shape, -1000.0, np.float32)
    array[_ball(shape, (20, 20, 20), 8)] = 1200.0  # the "bone" the stand-in delineates
    return Volume(array, np.diag([2.0, 2.0, 2.0, 1.0]))


def test_roi_names_match_tg263_and_source_names_ignoring_case_and_separators():
    matched = match_structures(["MANDIBLE", "Right Parotid", "parotid_r", "PTV70"], _model())
    assert matched == {"MANDIBLE": 0, "Right Parotid": 1, "parotid_r": 1}


def test_crop_is_centred_and_zero_padded_at_the_edge():
    array = np.arange(10 * 10 * 10, dtype=np.float32).reshape(1, 10, 10, 10) + 1
    out = crop_centred(array, np.array([0.0, 5.0, 5.0]), 4)
    assert out.shape == (1, 4, 4, 4)
    assert np.all(out[0, :2] == 0) and np.all(out[0, 2:] > 0)
    assert out[0, 2, 2, 2] == array[0, 0, 5, 5]


def test_qam_score_is_bounded_by_lambda():
    image = np.random.default_rng(0).random((24, 24, 24)).astype(np.float32)
    mask = _ball((24, 24, 24), (12, 12, 12), 5)
    score = qam_score(_critic(0.0), image, mask, 0, 2)
    assert -2.0 <= score <= 2.0


def test_the_combined_score_is_the_mean_of_the_two_standardised_checks():
    rule = AuditRule("Mandible", 0.5, 0.25, 0.8, 0.1, -1.0, 0.85, 0.9)
    assert rule.score(0.5, 0.8) == 0.0  # a typical sound contour
    assert rule.score(0.0, 0.6) == pytest.approx((-2.0 - 2.0) / 2)
    assert rule.acts and rule.min_dice == pytest.approx(0.6)
    assert not AuditRule("PTV70", 0, 1, 0.5, 0.3, -1.0, 0.79, 0.9).acts
    assert AuditRule("PTV70", 0, 1, 0.5, 0.3, -1.0, 0.79, 0.9).min_dice == 0.0


def test_a_card_calibrated_on_other_weights_gives_no_rules():
    card = ModelCard(_model(_audit(_rule("Mandible"))).config, ModelCard.load("hn-rt").path)
    assert set(card.audit_rules(WEIGHTS_SHA, QAM_SHA)) == {"Mandible"}
    assert card.audit_rules("2" * 64, QAM_SHA) == {} and card.audit_rules(WEIGHTS_SHA, "2" * 64) == {}
    assert ModelCard({}, card.path).audit_rules(WEIGHTS_SHA, QAM_SHA) == {}


def test_without_a_calibration_only_a_gross_disagreement_is_flagged_and_the_notes_say_so(ct):
    shape = ct.array.shape
    agreeing = _ball(shape, (20, 20, 20), 8)
    shifted = _ball(shape, (30, 20, 20), 8)  # 20 mm off the model's delineation
    rois = [
        _roi("Mandible", agreeing),
        _roi("Parotid_R", shifted),  # the model delineates no parotid: Dice 0
        _roi("Brain", agreeing),  # not a structure of this model
        _roi("Mandible_empty", np.zeros(shape)),
    ]
    results, notes, labels = audit_volume(ct, rois, _model(), _critic())
    assert [r.roi_name for r in results] == ["Parotid_R", "Mandible"]
    parotid, mandible = results
    assert mandible.dice > 0.95 and mandible.msd_mm < 2.0 and not mandible.flagged
    assert abs(mandible.contour_volume_cm3 - mandible.model_volume_cm3) < 0.1 * mandible.contour_volume_cm3
    assert parotid.dice == 0.0 and parotid.msd_mm is None and parotid.flagged
    assert parotid.reasons == ["Dice 0.00 with the model's delineation, below 0.50"]
    assert mandible.check_score is None and parotid.check_threshold is None
    assert any("Brain: not audited" in n for n in notes)
    assert any("not calibrated for its current weights" in n for n in notes)
    assert labels.array.shape == shape


def test_a_contour_is_checked_against_its_structure_with_the_voxels_it_shares(ct):
    """The label map gives the overlap to the more probable structure; the audit compares
    the ROI with the model's delineation of its own structure, overlap included."""
    bone = _ball(ct.array.shape, (20, 20, 20), 8)
    results, _, labels = audit_volume(ct, [_roi("Mandible", bone)], _model(network=BoneTwice()), _critic())
    assert not (labels.array == 1).any() and (labels.array == 2).sum() > 0.9 * bone.sum()
    (mandible,) = results
    assert mandible.dice > 0.95 and not mandible.flagged


def test_a_shifted_contour_is_flagged_by_the_combined_check(ct):
    shape = ct.array.shape
    agreeing = _ball(shape, (20, 20, 20), 8)
    shifted = _ball(shape, (26, 20, 20), 8)  # 12 mm off
    model = _model(_audit(_rule("Mandible", threshold=-1.0)))
    (sound,), _, _ = audit_volume(ct, [_roi("Mandible", agreeing)], model, _critic())
    (result,), notes, _ = audit_volume(ct, [_roi("Mandible", shifted)], model, _critic())
    assert sound.check_score > 0 and not sound.flagged
    assert result.dice < 0.7 and result.msd_mm > 4.0
    assert result.check_score < -1.0 and result.check_threshold == -1.0
    assert result.flagged and result.reasons == [
        f"the quality score ({result.qam_score:.2f}) and the Dice with the model's delineation ({result.dice:.2f}) "
        f"together rate it {result.check_score:.2f}, below -1.00: further from a sound contour of this structure "
        "than 9 in 10 sound contours are"
    ]
    assert any("Mandible (ROC AUC 0.91, flags below -1.00)" in n for n in notes)


def test_the_quality_score_alone_can_bring_the_combined_score_under_its_threshold(ct):
    agreeing = _ball(ct.array.shape, (20, 20, 20), 8)
    # Sound contours score 10 +- 0.1 (above what this critic can give, lambda 2): the
    # agreeing contour's Dice is perfect, its quality score far below sound ones.
    model = _model(_audit(_rule("Mandible", qam_mean=10.0, qam_sd=0.1)))
    (result,), _, _ = audit_volume(ct, [_roi("Mandible", agreeing)], model, _critic())
    assert result.dice > 0.95 and result.flagged and "the quality score" in result.reasons[0]


def test_a_structure_set_without_any_model_structure_is_refused(ct):
    with pytest.raises(AuditError, match="no contour in the structure set"):
        audit_volume(ct, [_roi("Brain", np.ones(ct.array.shape))], _model(), _critic())


def test_a_weak_check_flags_only_a_gross_disagreement_and_says_why(ct):
    shape = ct.array.shape
    shifted = _ball(shape, (26, 20, 20), 8)  # 12 mm off: Dice about 0.5
    rules = _audit(
        _rule("Mandible", val_auc=0.62, test_auc=0.7, threshold=10.0, dice_mean=0.9, dice_sd=0.05),
        _rule("Parotid_R", val_auc=0.62, test_auc=0.7, threshold=10.0, dice_mean=0.3, dice_sd=0.2),
    )
    rois = [_roi("Mandible", shifted), _roi("Parotid_R", _ball(shape, (20, 20, 20), 8))]
    results, notes, _ = audit_volume(ct, rois, _model(rules), _critic())
    by_name = {r.roi_name: r for r in results}
    mandible, parotid = by_name["Mandible"], by_name["Parotid_R"]
    # Both score below the threshold 10, which is not acted on (val AUC 0.62 < 0.8).
    assert mandible.check_threshold is None and mandible.check_score < 10.0
    assert mandible.reasons == [
        f"Dice {mandible.dice:.2f} with the model's delineation, below the 0.80 the model reaches with nearly "
        "every sound contour"
    ]
    # The model delineates no parotid (Dice 0), and a sound parotid's Dice is 0.3 +- 0.2.
    assert parotid.dice == 0.0 and not parotid.flagged
    assert any("Mandible (ROC AUC 0.70, validation 0.62)" in n and "does not flag" in n for n in notes)


def test_each_structure_is_judged_by_its_own_rule(ct):
    agreeing = _ball(ct.array.shape, (20, 20, 20), 8)
    rules = _audit(_rule("Mandible", threshold=10.0), _rule("Parotid_R", val_auc=0.55, threshold=10.0))
    rois = [_roi("Mandible", agreeing), _roi("Parotid_R", agreeing)]
    results, notes, _ = audit_volume(ct, rois, _model(rules), _critic())
    by_name = {r.roi_name: r for r in results}
    # Mandible: acted on (val AUC 0.9), below its threshold 10: flagged by the check.
    assert by_name["Mandible"].check_threshold == 10.0 and "together rate it" in by_name["Mandible"].reasons[0]
    # Parotid_R: val AUC 0.55, its check is shown and acts on nothing.
    assert by_name["Parotid_R"].check_threshold is None and by_name["Parotid_R"].check_auc_val == 0.55
    assert not any("together rate it" in t for t in by_name["Parotid_R"].reasons)
    assert any("Mandible (ROC AUC 0.91, flags below 10.00)" in n for n in notes)
    assert any("Parotid_R (ROC AUC 0.91, validation 0.55)" in n for n in notes)


def test_the_shipped_audit_is_calibrated_for_the_shipped_network_and_critic():
    card = ModelCard.load("hn-rt")
    rules = card.audit_rules(card.data["card"]["weights_sha256"], card.data["qam"]["sha256"])
    assert set(rules) == {s["name"] for s in card.data["structures"]}
    # A PTV is a prescribed margin the image does not show: its check must not act; the
    # organs' do where the calibration found them reliable.
    assert not any(rules[n].acts for n in ("PTV70", "PTV63", "PTV56"))
    assert any(rule.acts for rule in rules.values())
