"""DeepAtlas: registration and segmentation networks trained alternately.

Xu and Niethammer, "DeepAtlas: joint semi-supervised learning of image registration and
segmentation", MICCAI 2019. A registration U-Net (fixed, moving -> DDF) and a
segmentation U-Net (image -> structures) are trained in turn, the other held fixed.
Their link is the anatomy-similarity loss: Dice between the moving segmentation warped
to the fixed image and the fixed segmentation, where a missing manual label is replaced
by the segmentation network's prediction. So a pair with one labelled image teaches the
registration network through the predicted label of the other, and the segmentation
network through the warped label: few labels serve both (the few-label setting).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from engine.models.joint.base import (
    DEFAULT_FEATURES,
    JointOutput,
    UNet,
    warp_image,
    warp_masks,
)
from engine.models.joint.losses import (
    bending_energy,
    masked_dice_loss,
    similarity_loss,
    structure_probabilities,
    weighted_terms,
)


class DeepAtlas(nn.Module):
    """fixed, moving (B, 1, D, H, W) in [0, 1] -> JointOutput(ddf (B, 3, ...) in voxels,
    seg_logits (B, n_structures + 1, ...) of the fixed image). D, H, W multiples of 16."""

    def __init__(self, n_structures: int, features: Sequence[int] = DEFAULT_FEATURES):
        super().__init__()
        self.registration = UNet(2, 3, features, zero_head=True)
        self.segmentation = UNet(1, n_structures + 1, features)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> JointOutput:
        ddf = self.registration(torch.cat([fixed, moving], dim=1))
        return JointOutput(ddf, self.segmentation(fixed))


def _labels_or_prediction(masks: torch.Tensor, available: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """The manual mask where the structure is contoured, the network's probability elsewhere."""
    use = available[:, :, None, None, None].to(masks.dtype)
    return use * masks + (1 - use) * predicted


def deepatlas_loss(model: DeepAtlas, batch: dict, step: int, weights: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """Even steps train the registration network, odd steps the segmentation network
    (the other's output detached, so it gets no gradient).

    Registration step: NCC + ``bending`` x bending energy + ``anatomy`` x anatomy Dice,
    counted for structures contoured in at least one image of the pair.
    Segmentation step: ``seg_dice`` x supervised Dice on both images where contoured +
    ``anatomy`` x anatomy Dice where exactly one image is contoured (the other's label is
    the prediction being trained). batch: as ``cross_stitch_loss``.
    """
    fixed, moving = batch["fixed"], batch["moving"]
    f_avail, m_avail = batch["fixed_available"], batch["moving_available"]
    f_masks, m_masks = batch["fixed_masks"], batch["moving_masks"]
    train_registration = step % 2 == 0
    with torch.set_grad_enabled(not train_registration):
        f_pred = structure_probabilities(model.segmentation(fixed))
        m_pred = structure_probabilities(model.segmentation(moving))
    with torch.set_grad_enabled(train_registration):
        ddf = model.registration(torch.cat([fixed, moving], dim=1))
    target = _labels_or_prediction(f_masks, f_avail, f_pred)
    warped = warp_masks(_labels_or_prediction(m_masks, m_avail, m_pred), ddf)
    if train_registration:
        ncc = similarity_loss(fixed, warp_image(moving, ddf))
        bending = bending_energy(ddf)
        anatomy = masked_dice_loss(warped, target, f_avail | m_avail)
        return weighted_terms({"ncc": ncc, "bending": bending, "anatomy": anatomy}, weights, {})
    supervised = masked_dice_loss(f_pred, f_masks, f_avail) + masked_dice_loss(m_pred, m_masks, m_avail)
    anatomy = masked_dice_loss(warped, target, f_avail ^ m_avail)
    return weighted_terms({"seg_dice": supervised, "anatomy": anatomy}, weights, {})
