"""The contour audit (engine.infer.audit): structure matching, the critic's patch, metrics
against the model's delineation, and the flags a physician sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engine.infer.audit import AuditError, audit_volume, match_structures
from engine.infer.critic import Critic, crop_centred, qam_score
from engine.io.rtstruct_import import ImportedROI
from engine.models.card import StructureRule
from engine.models.qam import QualityAwarenessModule
from engine.models.registry import LoadedModel
from engine.volume import Volume


class BrightIsBone(nn.Module):
    """A stand-in network with a known answer: channel 0 is "voxel brighter than 0.5 on
    the windowed scale", channel 1 is never."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bone = 20.0 * (x - 0.5)
        return torch.cat([bone, torch.full_like(x, -20.0)], dim=1)


def _model(card: dict | None = None) -> LoadedModel:
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
    if card is not None:
        config["card"] = card
    return LoadedModel("toy", BrightIsBone().eval(), config, "0" * 64, torch.device("cpu"))


def _critic(threshold: float, auc: float = 0.9) -> Critic:
    torch.manual_seed(0)
    return Critic(QualityAwarenessModule(3).eval(), 2.0, 32, threshold, "1" * 64, auc)


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


def test_agreeing_contour_passes_and_disagreeing_ones_are_flagged_worst_first(ct):
    shape = ct.array.shape
    agreeing = _ball(shape, (20, 20, 20), 8)
    shifted = _ball(shape, (30, 20, 20), 8)  # 20 mm off the model's delineation
    rois = [
        _roi("Mandible", agreeing),
        _roi("Parotid_R", shifted),  # the model delineates no parotid: Dice 0
        _roi("Brain", agreeing),  # not a structure of this model
        _roi("Mandible_empty", np.zeros(shape)),
    ]
    results, notes, labels = audit_volume(ct, rois, _model(), _critic(-10.0))
    assert [r.roi_name for r in results] == ["Parotid_R", "Mandible"]
    parotid, mandible = results
    assert mandible.dice > 0.95 and mandible.msd_mm < 2.0 and not mandible.flagged
    assert abs(mandible.contour_volume_cm3 - mandible.model_volume_cm3) < 0.1 * mandible.contour_volume_cm3
    assert parotid.dice == 0.0 and parotid.msd_mm is None and parotid.flagged
    assert "Dice 0.00" in parotid.reasons[0]
    assert any("Brain: not audited" in n for n in notes)
    assert labels.array.shape == shape


def test_a_shifted_contour_is_flagged_against_the_models_usual_agreement(ct):
    shifted = _ball(ct.array.shape, (26, 20, 20), 8)  # 12 mm off
    card = {"evaluation_test": {"per_structure": {"Mandible": {"dice_mean": 0.8, "dice_std": 0.05}}}}
    (result,), _, _ = audit_volume(ct, [_roi("Mandible", shifted)], _model(card), _critic(-10.0))
    assert result.dice < 0.7 and result.msd_mm > 4.0
    assert result.flagged and "below the 0.70" in result.reasons[0]


def test_the_quality_check_flags_a_score_below_its_threshold(ct):
    agreeing = _ball(ct.array.shape, (20, 20, 20), 8)
    (result,), _, _ = audit_volume(ct, [_roi("Mandible", agreeing)], _model(), _critic(10.0))
    assert result.flagged and result.reasons == [
        f"the quality check scores it {result.qam_score:.2f}, below 10.00: the contour looks imprecise for this image"
    ]


def test_a_structure_set_without_any_model_structure_is_refused(ct):
    with pytest.raises(AuditError, match="no contour in the structure set"):
        audit_volume(ct, [_roi("Brain", np.ones(ct.array.shape))], _model(), _critic(0.0))


def test_a_weak_critic_flags_nothing_and_says_why(ct):
    agreeing = _ball(ct.array.shape, (20, 20, 20), 8)
    (result,), notes, _ = audit_volume(ct, [_roi("Mandible", agreeing)], _model(), _critic(10.0, auc=0.62))
    assert not result.flagged and result.reasons == []
    assert any("ROC AUC 0.62" in n for n in notes)


def test_a_critic_that_flags_says_how_well_it_separates_distorted_contours(ct):
    agreeing = _ball(ct.array.shape, (20, 20, 20), 8)
    (result,), notes, _ = audit_volume(ct, [_roi("Mandible", agreeing)], _model(), _critic(-10.0, auc=0.93))
    assert not result.flagged
    assert any("ROC AUC 0.93" in n and "-10.00" in n for n in notes)


def test_a_critic_acts_only_on_the_structures_it_judges_well_with_their_own_threshold(ct):
    agreeing = _ball(ct.array.shape, (20, 20, 20), 8)
    rules = (StructureRule("Mandible", 0.85, 0.91, 10.0), StructureRule("Parotid_R", 0.55, 0.82, 10.0))
    critic = Critic(_critic(0.0).network, 2.0, 32, 0.0, "1" * 64, 0.6, 3, rules)
    rois = [_roi("Mandible", agreeing), _roi("Parotid_R", agreeing)]
    results, notes, _ = audit_volume(ct, rois, _model(), critic)
    by_name = {r.roi_name: r for r in results}
    # Mandible: judged (val AUC 0.85), below its threshold 10: flagged by the score.
    assert by_name["Mandible"].qam_threshold == 10.0 and any("quality check" in t for t in by_name["Mandible"].reasons)
    # Parotid_R: val AUC 0.55 (whatever its test AUC), its score is shown and acts on nothing.
    assert by_name["Parotid_R"].qam_threshold is None
    assert not any("quality check" in t for t in by_name["Parotid_R"].reasons)
    assert any("Mandible (ROC AUC 0.91, flags below 10.00)" in n for n in notes)
    assert any("Parotid_R (ROC AUC 0.82, validation 0.55)" in n for n in notes)
