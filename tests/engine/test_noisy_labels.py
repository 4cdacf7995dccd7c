"""Pick-and-Learn pieces: QAM weights, the OCM bound, the label-noise protocol, ablation blocks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from engine.models.qam import (
    QualityAwarenessModule,
    overfitting_control,
    sample_weights,
    weighted_loss,
)
from engine.models.res_se_unet import ResSEUNet
from engine.train.label_noise import RANGES_MM, corrupt_masks, noisy_cases

scores = st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=8).map(torch.tensor)


@settings(max_examples=50, deadline=None)
@given(raw=scores, lam=st.sampled_from([0.5, 1.0, 2.0, 3.0]))
def test_weights_sum_to_one_and_ocm_bounds_their_ratio(raw, lam):
    weights = sample_weights(raw.double(), lam)
    assert torch.isclose(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert float(weights.max() / weights.min()) <= math.exp(2 * lam) * (1 + 1e-9)


def test_without_ocm_one_sample_can_take_all_the_weight():
    weights = sample_weights(torch.tensor([40.0, 0.0, 0.0]), None)
    assert weights[0] > 0.999
    bounded = sample_weights(torch.tensor([40.0, 0.0, 0.0]), 1.0)
    assert bounded[0] < math.exp(2) / (math.exp(2) + 2) + 1e-6


def test_ocm_rejects_a_non_positive_lambda():
    with pytest.raises(ValueError, match="positive"):
        overfitting_control(torch.zeros(2), 0.0)


def test_weighted_loss_gives_gradients_to_both_networks():
    torch.manual_seed(0)
    qam = QualityAwarenessModule(3, channels=(4, 4))
    pairs = torch.randn(4, 3, 8, 8, 8)
    seg_param = torch.ones(4, requires_grad=True)
    per_sample = seg_param * torch.tensor([0.1, 0.2, 0.9, 1.0])
    loss = weighted_loss(per_sample, sample_weights(qam(pairs), 2.0))
    loss.backward()
    assert seg_param.grad is not None and all(p.grad is not None for p in qam.parameters())


def test_the_qam_learns_to_weight_down_high_loss_samples():
    """Minimising sum(w x loss) moves weight to the samples the segmentation fits best."""
    torch.manual_seed(0)
    qam = QualityAwarenessModule(2, channels=(4, 8))
    clean = torch.zeros(4, 2, 8, 8, 8)
    noisy = torch.zeros(4, 2, 8, 8, 8)
    noisy[:, 1] = 1.0  # the "label" channel differs
    pairs = torch.cat([clean, noisy])
    per_sample = torch.tensor([0.1] * 4 + [0.9] * 4)
    opt = torch.optim.Adam(qam.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        weighted_loss(per_sample, sample_weights(qam(pairs), 2.0)).backward()
        opt.step()
    weights = sample_weights(qam(pairs), 2.0).detach()
    assert weights[:4].mean() > 3 * weights[4:].mean()


@pytest.mark.parametrize("operation", ["dilate", "erode"])
def test_corruption_is_morphology_with_a_ball_round_in_mm(operation):
    """The distance-transform thresholds give the same sets as scipy's morphology with
    an explicit ball (anisotropic grid; the structure away from the array's edge)."""
    spacing, radius = (1.0, 1.0, 3.0), 6.0
    masks = np.zeros((1, 48, 48, 24), np.uint8)
    masks[0, 14:34, 16:30, 8:16] = 1
    masks[0, 20:26, 10:16, 10:14] = 1
    rng = np.random.default_rng(0)
    while True:  # a generator state whose coin gives ``operation``
        state = rng.bit_generator.state
        _, record = corrupt_masks(masks, spacing, (radius, radius), rng)
        if record[0].operation == operation:
            break
    rng.bit_generator.state = state
    out, _ = corrupt_masks(masks, spacing, (radius, radius), rng)
    half = [int(radius // s) for s in spacing]
    grid = np.meshgrid(
        *[np.arange(-h, h + 1) * s for h, s in zip(half, spacing, strict=True)],
        indexing="ij",
    )
    element = sum(g**2 for g in grid) <= radius**2
    assert element.shape == (13, 13, 5)
    morph = ndimage.binary_dilation if operation == "dilate" else ndimage.binary_erosion
    expected = morph(masks[0] > 0, structure=element)
    np.testing.assert_array_equal(out[0] > 0, expected)


def test_noisy_cases_are_a_fixed_fraction_with_a_fixed_seed():
    cases = [f"pt_{i}" for i in range(40)]
    chosen = noisy_cases(cases, 0.25, seed=3)
    assert len(chosen) == 10 and chosen == noisy_cases(list(reversed(cases)), 0.25, seed=3)
    assert noisy_cases(cases, 0.25, seed=4) != chosen
    assert noisy_cases(cases, 0.0, seed=3) == set()
    with pytest.raises(ValueError):
        noisy_cases(cases, 1.5, seed=3)


def test_corruption_dilates_or_erodes_each_available_structure():
    masks = np.zeros((3, 40, 40, 20), np.uint8)
    masks[0, 10:30, 10:30, 5:15] = 1
    masks[1, 12:28, 12:28, 6:14] = 1
    masks[2, 15:25, 15:25, 8:12] = 1
    available = np.array([True, True, False])
    out, record = corrupt_masks(masks, (1.0, 1.0, 2.0), RANGES_MM["small"], np.random.default_rng(0), available)
    assert [r.structure for r in record] == [0, 1]
    for r in record:
        before, after = masks[r.structure].sum(), out[r.structure].sum()
        assert (after > before) if r.operation == "dilate" else (after < before)
        assert RANGES_MM["small"][0] <= r.radius_mm <= RANGES_MM["small"][1]
    np.testing.assert_array_equal(out[2], masks[2])
    again, _ = corrupt_masks(masks, (1.0, 1.0, 2.0), RANGES_MM["small"], np.random.default_rng(0), available)
    np.testing.assert_array_equal(again, out)


@pytest.mark.parametrize("residual, se", [(False, False), (True, False), (False, True)])
def test_ablation_variants_keep_the_output_shape(residual, se):
    net = ResSEUNet(1, 2, channels=(4, 8, 8), residual=residual, se=se).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 16, 16, 8)).shape == (1, 2, 16, 16, 8)
    full = sum(p.numel() for p in ResSEUNet(1, 2, channels=(4, 8, 8)).parameters())
    assert sum(p.numel() for p in net.parameters()) < full
