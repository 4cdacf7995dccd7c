"""What every joint registration + segmentation model shares: its output type, the
U-Net stages it is built from (MONAI ``TwoConv``/``Down``/``UpCat``, the blocks of
``monai.networks.nets.BasicUNet``) and warping in the MONAI ``Warp`` convention.

Axis order of every tensor: (B, C, D, H, W) on the working grid (RAS, isotropic voxels,
each spatial size a multiple of 16). A DDF is (B, 3, D, H, W) in voxels: ``Warp`` samples
the moving image at x + ddf(x), ``ddf[:, i]`` along spatial axis i
(docs: /work/notes/issue5-contract.md, "Working grid and DDF convention").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from monai.networks.blocks import Warp
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat
from torch import nn

ACT = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True})
NORM = ("instance", {"affine": True})
# Encoder widths of the 5 levels, then the width of the last decoder stage.
DEFAULT_FEATURES = (4, 8, 16, 32, 32, 4)  # CPU-sized


class JointOutput(NamedTuple):
    """ddf: (B, 3, D, H, W) in working-grid voxels (MONAI ``Warp`` convention);
    seg_logits: (B, C + 1, D, H, W) segmentation of the FIXED image, channel 0
    background, or None for a registration-only model."""

    ddf: torch.Tensor
    seg_logits: torch.Tensor | None


def check_features(features: Sequence[int]) -> tuple[int, ...]:
    """Validate U-Net widths: 6 positive even integers (the decoder halves them).

    Raises:
        ValueError: another length, or a width that is not a positive even integer.
    """
    features = tuple(int(f) for f in features)
    if len(features) != 6 or any(f < 2 or f % 2 for f in features):
        raise ValueError(f"features must be 6 positive even widths (5 levels + last decoder), got {features}")
    return features


class UNetEncoder(nn.Module):
    """Five levels, the last four after a 2x max-pool: input (B, in, D, H, W) ->
    [(B, f0, D, H, W), (B, f1, D/2, ...), ..., (B, f4, D/16, H/16, W/16)]."""

    def __init__(self, in_channels: int, features: Sequence[int]):
        super().__init__()
        f = check_features(features)
        self.stages = nn.ModuleList(
            [TwoConv(3, in_channels, f[0], ACT, NORM, True)]
            + [Down(3, f[i], f[i + 1], ACT, NORM, True) for i in range(4)]
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class UNetDecoder(nn.Module):
    """Four up-sampling stages with skip concatenation and a 1x1x1 head:
    the encoder's five maps -> (B, out_channels, D, H, W).

    ``zero_head``: the head starts at zero, so a registration decoder starts at the
    identity transform (zero DDF or zero velocity).
    """

    def __init__(self, features: Sequence[int], out_channels: int, zero_head: bool = False):
        super().__init__()
        f = check_features(features)
        self.stages = nn.ModuleList(
            [
                UpCat(3, f[4], f[3], f[3], ACT, NORM, True),
                UpCat(3, f[3], f[2], f[2], ACT, NORM, True),
                UpCat(3, f[2], f[1], f[1], ACT, NORM, True),
                UpCat(3, f[1], f[0], f[5], ACT, NORM, True, halves=False),
            ]
        )
        self.head = nn.Conv3d(f[5], out_channels, kernel_size=1)
        if zero_head:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        x = skips[4]
        for stage, skip in zip(self.stages, reversed(skips[:4]), strict=True):
            x = stage(x, skip)
        return self.head(x)


class UNet(nn.Module):
    """``UNetEncoder`` + ``UNetDecoder``: (B, in, D, H, W) -> (B, out, D, H, W)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        features: Sequence[int],
        zero_head: bool = False,
    ):
        super().__init__()
        self.encoder = UNetEncoder(in_channels, features)
        self.decoder = UNetDecoder(features, out_channels, zero_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


_warp_image = Warp(mode="bilinear", padding_mode="border")
_warp_masks = Warp(mode="bilinear", padding_mode="zeros")


def warp_image(moving: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
    """Moving image (B, 1, D, H, W) sampled at x + ddf(x), trilinear, edge values outside."""
    return _warp_image(moving, ddf)


def warp_masks(masks: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
    """Structure probabilities (B, C, D, H, W) in [0, 1] warped trilinearly (zero outside),
    so a Dice on them has a gradient; threshold at 0.5 for a mask, never warp integers."""
    return _warp_masks(masks, ddf)
