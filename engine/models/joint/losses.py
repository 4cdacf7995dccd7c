"""Loss terms shared by the joint models (each model's own loss sits next to it).

Shapes: images (B, 1, D, H, W) in [0, 1]; structure masks or probabilities
(B, C, D, H, W); ``available`` (B, C) bool: structure c is contoured in sample b.
An uncontoured structure is unknown, not background, so it never enters a Dice.
"""

from __future__ import annotations

import torch
from monai.losses import (
    BendingEnergyLoss,
    DiceLoss,
    LocalNormalizedCrossCorrelationLoss,
)

_dice = DiceLoss(reduction="none")
_bending = BendingEnergyLoss()


def similarity_loss(
    fixed: torch.Tensor,
    warped: torch.Tensor,
    mask: torch.Tensor | None = None,
    kernel_size: int = 5,
) -> torch.Tensor:
    """Negative local normalised cross-correlation (MONAI, rectangular window of
    ``kernel_size`` voxels), averaged over the voxels where ``mask`` (B, 1, D, H, W)
    is 1: -1 for a perfect match.

    A masked-out voxel still influences its neighbours' windows; Estienne et al. 2020
    mask the loss, not the images, and so do we.
    """
    ncc = LocalNormalizedCrossCorrelationLoss(kernel_size=kernel_size, reduction="none")
    per_voxel = ncc(warped, fixed)
    if mask is None:
        return per_voxel.mean()
    return (per_voxel * mask).sum() / mask.sum().clamp(min=1.0)


def bending_energy(ddf: torch.Tensor) -> torch.Tensor:
    """Bending energy (mean squared second derivatives, voxel units) of a (B, 3, D, H, W) field."""
    return _bending(ddf)


def masked_dice_loss(pred: torch.Tensor, target: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice per sample and structure, averaged over the available pairs.

    pred, target: (B, C, D, H, W) in [0, 1]; available: (B, C) bool. Zero (with a
    gradient path) when nothing is available, so a batch of unlabelled pairs is no error.
    """
    per = _dice(pred, target).flatten(1)  # (B, C)
    w = available.to(per.dtype)
    return (per * w).sum() / w.sum().clamp(min=1.0)


def structure_probabilities(seg_logits: torch.Tensor) -> torch.Tensor:
    """(B, C + 1, ...) logits, channel 0 background -> (B, C, ...) softmax probabilities."""
    return torch.softmax(seg_logits, dim=1)[:, 1:]


def weighted_terms(
    terms: dict[str, torch.Tensor], weights: dict, defaults: dict[str, float]
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss sum of ``terms`` (scalar tensors), each times its weight from the run
    config's ``weights``, else ``defaults``, else 1; and the terms' values for the log."""
    total = sum(
        (weights.get(k, defaults.get(k, 1.0)) * v for k, v in terms.items()),
        start=torch.zeros(()),
    )
    return total, {k: v.item() for k, v in terms.items()}


def uncertainty_weighted(terms: list[torch.Tensor], log_variances: torch.Tensor) -> torch.Tensor:
    """Homoscedastic task weighting (Kendall, Gal and Cipolla, CVPR 2018, eq. 7 without
    the constant factors): sum_k exp(-s_k) L_k + s_k, s_k = log sigma_k^2 learned."""
    total = torch.zeros((), dtype=log_variances.dtype, device=log_variances.device)
    for k, term in enumerate(terms):
        total = total + torch.exp(-log_variances[k]) * term + log_variances[k]
    return total
