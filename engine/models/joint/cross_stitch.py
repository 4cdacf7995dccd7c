"""Cross-stitch joint registration and segmentation network.

Beljaards et al., "A cross-stitch architecture for joint registration and segmentation
in adaptive radiotherapy", MIDL 2020; Elmahdy et al., "Joint registration and
segmentation via multi-task learning for adaptive radiotherapy of prostate cancer",
IEEE Access 9, 2021. A registration U-Net (input: fixed and moving) and a segmentation
U-Net (input: fixed) of the same widths exchange features through a learnable
per-channel 2x2 cross-stitch unit (Misra et al., CVPR 2016) after every encoder and
decoder stage. Loss: NCC + bending energy + registration Dice (moving structures warped
as one-hot probabilities) + segmentation Dice, the task weights equal or learned
(homoscedastic uncertainty, Kendall et al., CVPR 2018).
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
    bending_energy,
    masked_dice_loss,
    similarity_loss,
    structure_probabilities,
    uncertainty_weighted,
    weighted_terms,
)


class CrossStitch(nn.Module):
    """Per-channel linear mixing of two tasks' feature maps a, b (B, C, ...):

        a'_c = w_c[0, 0] a_c + w_c[0, 1] b_c,   b'_c = w_c[1, 0] a_c + w_c[1, 1] b_c

    starting at ``self_weight`` on the diagonal and 1 - ``self_weight`` off it (Misra
    et al. 2016 found 0.9 / 0.1 a good start).
    """

    def __init__(self, channels: int, self_weight: float = 0.9):
        super().__init__()
        if not 0.0 <= self_weight <= 1.0:
            raise ValueError(f"self_weight must lie in [0, 1], got {self_weight}")
        s = self_weight
        self.weight = nn.Parameter(torch.tensor([[s, 1.0 - s], [1.0 - s, s]]).repeat(channels, 1, 1))  # (C, 2, 2)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1) + (1,) * (a.ndim - 2)
        w = self.weight
        return (
            w[:, 0, 0].view(shape) * a + w[:, 0, 1].view(shape) * b,
            w[:, 1, 0].view(shape) * a + w[:, 1, 1].view(shape) * b,
        )


class CrossStitchNet(nn.Module):
    """fixed, moving (B, 1, D, H, W) in [0, 1] -> JointOutput(ddf (B, 3, ...) in voxels,
    seg_logits (B, n_structures + 1, ...) of the fixed image). D, H, W multiples of 16.

    ``task_weights``: "equal", or "learned" (three log-variances, one per task term:
    NCC + bending energy, registration Dice, segmentation Dice; trained with the network).
    """

    def __init__(
        self,
        n_structures: int,
        features: Sequence[int] = DEFAULT_FEATURES,
        task_weights: str = "equal",
        self_weight: float = 0.9,
    ):
        super().__init__()
        if task_weights not in ("equal", "learned"):
            raise ValueError(f"task_weights must be 'equal' or 'learned', got {task_weights!r}")
        f = check_features(features)
        self.reg_encoder = UNetEncoder(2, f)
        self.seg_encoder = UNetEncoder(1, f)
        self.reg_decoder = UNetDecoder(f, 3, zero_head=True)
        self.seg_decoder = UNetDecoder(f, n_structures + 1)
        widths = [f[0], f[1], f[2], f[3], f[4], f[3], f[2], f[1], f[5]]
        self.stitches = nn.ModuleList(CrossStitch(c, self_weight) for c in widths)
        self.log_variances = nn.Parameter(torch.zeros(3)) if task_weights == "learned" else None

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> JointOutput:
        r, s = torch.cat([fixed, moving], dim=1), fixed
        r_skips, s_skips = [], []
        stitch = iter(self.stitches)
        for r_stage, s_stage in zip(self.reg_encoder.stages, self.seg_encoder.stages, strict=True):
            r, s = next(stitch)(r_stage(r), s_stage(s))
            r_skips.append(r)
            s_skips.append(s)
        for r_stage, s_stage, r_skip, s_skip in zip(
            self.reg_decoder.stages,
            self.seg_decoder.stages,
            reversed(r_skips[:4]),
            reversed(s_skips[:4]),
            strict=True,
        ):
            r, s = next(stitch)(r_stage(r, r_skip), s_stage(s, s_skip))
        return JointOutput(self.reg_decoder.head(r), self.seg_decoder.head(s))


def cross_stitch_loss(
    model: CrossStitchNet, batch: dict, step: int, weights: dict
) -> tuple[torch.Tensor, dict[str, float]]:
    """NCC + bending energy + registration Dice + segmentation Dice.

    batch: ``fixed``, ``moving`` (B, 1, ...), ``fixed_masks``, ``moving_masks``
    (B, C, ...), ``fixed_available``, ``moving_available`` (B, C) bool. weights:
    ``bending`` (multiplies the bending energy inside the registration term), and with
    equal task weights ``reg_dice`` and ``seg_dice``. Returns (loss, terms as floats).
    """
    out = model(batch["fixed"], batch["moving"])
    ncc = similarity_loss(batch["fixed"], warp_image(batch["moving"], out.ddf))
    bending = bending_energy(out.ddf)
    reg_dice = masked_dice_loss(
        warp_masks(batch["moving_masks"], out.ddf),
        batch["fixed_masks"],
        batch["fixed_available"] & batch["moving_available"],
    )
    seg_dice = masked_dice_loss(
        structure_probabilities(out.seg_logits),
        batch["fixed_masks"],
        batch["fixed_available"],
    )
    named = {"ncc": ncc, "bending": bending, "reg_dice": reg_dice, "seg_dice": seg_dice}
    if model.log_variances is None:
        return weighted_terms(named, weights, {})
    # One uncertainty per task term; bending energy stays tied to the NCC it regularises.
    image_term = ncc + weights.get("bending", 1.0) * bending
    total = uncertainty_weighted([image_term, reg_dice, seg_dice], model.log_variances)
    return total, {k: v.item() for k, v in named.items()}
