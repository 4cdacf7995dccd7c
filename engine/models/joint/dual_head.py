"""Dual-head network: one shared encoder, a segmentation and a registration decoder.

Estienne et al., "Deep learning-based concurrent brain registration and tumor
segmentation", Front. Comput. Neurosci. 14:17, 2020. The same encoder is applied to the
fixed and to the moving image; the segmentation decoder reads each image's features, the
registration decoder their difference (fixed - moving) at every level. The registration
decoder predicts the spatial gradient of the deformation, kept in (0, 2) by 2 sigmoid,
which a cumulative sum along each axis integrates into the deformation (Christodoulidis
et al., MICCAI 2018), so the mapping is monotonic along each axis and cannot fold along
it. The similarity loss is masked out where either image holds tumour (here PTV70), so
the target region, which may change between the scans, does not drag the deformation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from engine.models.joint.base import (
    DEFAULT_FEATURES,
    JointOutput,
    UNetDecoder,
    UNetEncoder,
    check_features,
    warp_image,
    warp_masks,
)
from engine.models.joint.losses import (
    masked_dice_loss,
    similarity_loss,
    structure_probabilities,
    weighted_terms,
)


def integrate_gradient(gradient: torch.Tensor) -> torch.Tensor:
    """Spatial gradient of the deformation (B, 3, D, H, W), channel i the derivative of
    the mapped coordinate i along axis i (1 = identity), -> DDF in voxels (B, 3, D, H, W):

        ddf_i(x) = sum over k <= x_i along axis i of (gradient_i - 1)

    A constant gradient g gives ddf_i = (g - 1)(x_i + 1), a linear field.
    """
    return torch.stack([torch.cumsum(gradient[:, i] - 1.0, dim=i + 1) for i in range(3)], dim=1)


class DualHeadNet(nn.Module):
    """fixed, moving (B, 1, D, H, W) in [0, 1] -> JointOutput(ddf (B, 3, ...) in voxels,
    seg_logits (B, n_structures + 1, ...) of the fixed image). D, H, W multiples of 16.
    The registration head starts at zero, i.e. gradient 1, i.e. the identity."""

    def __init__(self, n_structures: int, features: Sequence[int] = DEFAULT_FEATURES):
        super().__init__()
        f = check_features(features)
        self.encoder = UNetEncoder(1, f)
        self.seg_decoder = UNetDecoder(f, n_structures + 1)
        self.reg_decoder = UNetDecoder(f, 3, zero_head=True)

    def run(self, fixed: torch.Tensor, moving: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything the loss needs: ``ddf``, ``gradient`` (B, 3, ...), and the
        segmentation logits of both images, ``fixed_logits`` and ``moving_logits``."""
        both = self.encoder(torch.cat([fixed, moving], dim=0))
        n = fixed.shape[0]
        difference = [x[:n] - x[n:] for x in both]
        gradient = 2.0 * torch.sigmoid(self.reg_decoder(difference))
        logits = self.seg_decoder(both)
        return {
            "ddf": integrate_gradient(gradient),
            "gradient": gradient,
            "fixed_logits": logits[:n],
            "moving_logits": logits[n:],
        }

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> JointOutput:
        out = self.run(fixed, moving)
        return JointOutput(out["ddf"], out["fixed_logits"])


def dual_head_loss(model: DualHeadNet, batch: dict, step: int, weights: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """NCC outside the tumour of either image + ``smoothness`` x mean |gradient - 1|
    (the deformation-gradient regulariser of Estienne et al.) + ``reg_dice`` x
    registration Dice + ``seg_dice`` x segmentation Dice of both images.

    batch: as ``cross_stitch_loss`` plus ``fixed_ptv``, ``moving_ptv`` (B, 1, ...) 0/1.
    """
    out = model.run(batch["fixed"], batch["moving"])
    ddf = out["ddf"]
    tumour = torch.maximum(batch["fixed_ptv"], warp_masks(batch["moving_ptv"], ddf))
    ncc = similarity_loss(batch["fixed"], warp_image(batch["moving"], ddf), mask=(tumour < 0.5).float())
    smoothness = (out["gradient"] - 1.0).abs().mean()
    reg_dice = masked_dice_loss(
        warp_masks(batch["moving_masks"], ddf),
        batch["fixed_masks"],
        batch["fixed_available"] & batch["moving_available"],
    )
    seg_dice = masked_dice_loss(
        structure_probabilities(out["fixed_logits"]),
        batch["fixed_masks"],
        batch["fixed_available"],
    ) + masked_dice_loss(
        structure_probabilities(out["moving_logits"]),
        batch["moving_masks"],
        batch["moving_available"],
    )
    return weighted_terms(
        {
            "ncc": ncc,
            "smoothness": smoothness,
            "reg_dice": reg_dice,
            "seg_dice": seg_dice,
        },
        weights,
        {},
    )
