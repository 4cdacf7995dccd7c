"""Training pieces: the partial-label loss and the patch sampler."""

from __future__ import annotations

import numpy as np
import torch

from engine.train.segmentation import PatchSampler, masked_loss


def test_uncontoured_structures_do_not_count():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, 8)
    target = torch.zeros(2, 3, 8, 8, 8)
    target[:, 0, 2:6, 2:6, 2:6] = 1
    available = torch.tensor([[True, False, False], [True, False, False]])
    base = masked_loss(logits, target, available)
    changed = logits.clone()
    changed[:, 1:] = 50.0  # wildly wrong on structures nobody contoured
    assert torch.isclose(masked_loss(changed, target, available), base)
    available_all = torch.ones(2, 3, dtype=torch.bool)
    assert masked_loss(changed, target, available_all) > base


def test_sampler_returns_full_patches_and_prefers_structures():
    masks = np.zeros((2, 40, 30, 20), np.uint8)
    masks[1, 30:34, 5:8, 2:5] = 1
    case = {
        "image": np.random.default_rng(0).random((40, 30, 20)).astype(np.float16),
        "masks": masks,
        "available": np.array([True, True]),
    }
    sampler = PatchSampler([case], patch=16, fg_fraction=1.0, weights=np.ones(2), seed=0)
    hits = 0
    for _ in range(20):
        image, patch_masks, _ = sampler.sample()
        assert image.shape == (1, 16, 16, 16) and patch_masks.shape == (2, 16, 16, 16)
        hits += bool(patch_masks[1].any())
    assert hits == 20
