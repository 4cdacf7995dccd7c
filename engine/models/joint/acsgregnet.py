"""ACSGRegNet: affine then diffeomorphic registration with cross- and self-attention.

Gao and Zheng, "ACSGRegNet: a deep learning-based framework for unsupervised joint
affine and diffeomorphic registration of lumbar spine CT via cross- and self-attention
fusion", arXiv:2208.02642, 2022. Stage 1 predicts an affine transform from both images
and warps the moving image. Stage 2 encodes the fixed and the affinely warped moving
image with one shared encoder; at the coarsest level a cross-attention module lets each
image's features attend to the other's and a self-attention module lets each attend to
itself. Two decoders turn the cross- and the self-attended features into two stationary
velocity fields, a learned gate fuses them voxel by voxel, and scaling and squaring
(MONAI ``DVF2DDF``, 7 steps) integrates the fused velocity into a diffeomorphic DDF.
Registration only: ``seg_logits`` is None; the structure masks enter as a registration
Dice (semi-supervised, as for the other joint models).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import DVF2DDF
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
    weighted_terms,
)


def affine_ddf(matrix: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """DDF (B, 3, D, H, W) in voxels of x -> A x + t about the grid centre c:
    ddf(x) = (A - I)(x - c) + t, from ``matrix`` (B, 3, 4) = [A - I | t] in voxels."""
    axes = [torch.arange(n, dtype=matrix.dtype, device=matrix.device) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (3, D, H, W)
    centre = torch.tensor([(n - 1) / 2 for n in shape], dtype=matrix.dtype)
    centred = grid - centre.to(matrix.device).view(3, 1, 1, 1)
    linear = torch.einsum("bij,jdhw->bidhw", matrix[:, :, :3], centred)
    return linear + matrix[:, :, 3].view(-1, 3, 1, 1, 1)


class AttentionFusion(nn.Module):
    """Self- and cross-attention between two (B, C, d, h, w) feature maps, tokens = voxels.

    Returns (self-attended, cross-attended), each (B, 2C, d, h, w): the fixed and the
    moving image's features side by side, each with a residual connection.
    """

    def __init__(self, channels: int, heads: int = 2):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.norm = nn.LayerNorm(channels)
        self.self_attention = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.cross_attention = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, *spatial = fixed.shape
        f = self.norm(fixed.flatten(2).transpose(1, 2))  # (B, N, C)
        m = self.norm(moving.flatten(2).transpose(1, 2))
        sa_f = f + self.self_attention(f, f, f, need_weights=False)[0]
        sa_m = m + self.self_attention(m, m, m, need_weights=False)[0]
        ca_f = f + self.cross_attention(f, m, m, need_weights=False)[0]
        ca_m = m + self.cross_attention(m, f, f, need_weights=False)[0]

        def grid(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, y], dim=2).transpose(1, 2).reshape(b, 2 * c, *spatial)

        return grid(sa_f, sa_m), grid(ca_f, ca_m)


class ACSGRegNet(nn.Module):
    """fixed, moving (B, 1, D, H, W) in [0, 1] -> JointOutput(ddf (B, 3, ...) in voxels,
    None). D, H, W multiples of 16. Affine parameters and both velocity heads start at
    zero, so the network starts at the identity.

    ``n_structures`` is accepted for a uniform constructor; the model does not segment.
    """

    def __init__(
        self,
        n_structures: int,
        features: Sequence[int] = DEFAULT_FEATURES,
        integration_steps: int = 7,
    ):
        super().__init__()
        f = check_features(features)
        self.affine_encoder = UNetEncoder(2, f)
        self.affine_head = nn.Linear(f[4], 12)
        nn.init.zeros_(self.affine_head.weight)
        nn.init.zeros_(self.affine_head.bias)
        self.encoder = UNetEncoder(1, f)
        self.fusion = AttentionFusion(f[4])
        doubled = [2 * w for w in f]
        self.self_decoder = UNetDecoder(doubled, 3, zero_head=True)
        self.cross_decoder = UNetDecoder(doubled, 3, zero_head=True)
        self.gate = nn.Conv3d(6, 3, kernel_size=3, padding=1)
        self.integrate = DVF2DDF(num_steps=integration_steps, padding_mode="border")

    def run(self, fixed: torch.Tensor, moving: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything the loss needs: ``ddf_affine``, ``velocity``, ``ddf_diffeo`` and the
        composed ``ddf`` (all (B, 3, D, H, W), voxels)."""
        shape = fixed.shape[2:]
        pooled = self.affine_encoder(torch.cat([fixed, moving], dim=1))[4].mean(dim=(2, 3, 4))
        matrix = self.affine_head(pooled).view(-1, 3, 4)
        ddf_affine = affine_ddf(matrix, shape)
        moved = warp_image(moving, ddf_affine)
        n = fixed.shape[0]
        skips = self.encoder(torch.cat([fixed, moved], dim=0))
        paired = [torch.cat([x[:n], x[n:]], dim=1) for x in skips]
        self_attended, cross_attended = self.fusion(skips[4][:n], skips[4][n:])
        v_self = self.self_decoder(paired[:4] + [self_attended])
        v_cross = self.cross_decoder(paired[:4] + [cross_attended])
        g = torch.sigmoid(self.gate(torch.cat([v_self, v_cross], dim=1)))
        velocity = g * v_self + (1 - g) * v_cross
        ddf_diffeo = self.integrate(velocity)
        # The moving point of x is y + ddf_affine(y) with y = x + ddf_diffeo(x); the affine
        # part is linear, so ddf_affine(y) = ddf_affine(x) + (A - I) ddf_diffeo(x) exactly.
        ddf = ddf_diffeo + ddf_affine + torch.einsum("bij,bjdhw->bidhw", matrix[:, :, :3], ddf_diffeo)
        return {
            "ddf_affine": ddf_affine,
            "velocity": velocity,
            "ddf_diffeo": ddf_diffeo,
            "ddf": ddf,
        }

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> JointOutput:
        return JointOutput(self.run(fixed, moving)["ddf"], None)


def acsgregnet_loss(model: ACSGRegNet, batch: dict, step: int, weights: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """NCC of the final warp + ``affine_ncc`` x NCC of the affine stage alone (so the first
    stage learns a global alignment of its own) + ``bending`` x bending energy of the
    diffeomorphic DDF + ``reg_dice`` x registration Dice. batch: as ``cross_stitch_loss``."""
    out = model.run(batch["fixed"], batch["moving"])
    ncc = similarity_loss(batch["fixed"], warp_image(batch["moving"], out["ddf"]))
    affine_ncc = similarity_loss(batch["fixed"], warp_image(batch["moving"], out["ddf_affine"]))
    bending = bending_energy(out["ddf_diffeo"])
    reg_dice = masked_dice_loss(
        warp_masks(batch["moving_masks"], out["ddf"]),
        batch["fixed_masks"],
        batch["fixed_available"] & batch["moving_available"],
    )
    return weighted_terms(
        {
            "ncc": ncc,
            "affine_ncc": affine_ncc,
            "bending": bending,
            "reg_dice": reg_dice,
        },
        weights,
        {"affine_ncc": 0.5},
    )
