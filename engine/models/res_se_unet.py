"""3D residual U-Net with squeeze-and-excitation blocks (Res-UNet + SE).

Each stage is an SE-ResNet block (Hu et al., "Squeeze-and-Excitation Networks",
CVPR 2018): two 3x3x3 convolutions with instance norm, a channel SE layer on the
residual branch, then the identity (or a 1x1x1 projection) added back. Encoder
stages downsample by strided convolution, decoder stages upsample by transposed
convolution and concatenate the skip connection (Ronneberger et al., 2015;
residual units as in Kerfoot et al., 2018, MONAI ``UNet``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.blocks import ChannelSELayer, Convolution
from monai.networks.layers.utils import get_norm_layer
from torch import nn


class ResSEBlock(nn.Module):
    """SE-ResNet block: (B, C_in, X, Y, Z) -> (B, C_out, X, Y, Z) (or (B, C, X, Y) in 2D).

    ``residual=False`` drops the identity path and ``se=False`` the SE layer (the
    ablation of the thesis: U-Net, + residual, + SE); with both off it is the plain
    two-convolution U-Net block.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        se_ratio: int = 4,
        residual: bool = True,
        se: bool = True,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        self.residual = residual
        d = spatial_dims
        self.conv1 = Convolution(d, in_channels, out_channels, act="LEAKYRELU", norm="INSTANCE")
        self.conv2 = Convolution(d, out_channels, out_channels, conv_only=True)
        self.norm2 = get_norm_layer(("instance", {"affine": True}), d, out_channels)
        self.se = ChannelSELayer(d, out_channels, r=se_ratio) if se else nn.Identity()
        self.skip = (
            nn.Identity()
            if in_channels == out_channels or not residual
            else Convolution(d, in_channels, out_channels, kernel_size=1, conv_only=True)
        )
        self.act = nn.LeakyReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.se(self.norm2(self.conv2(self.conv1(x))))
        return self.act(branch + self.skip(x) if self.residual else branch)


class ResSEUNet(nn.Module):
    """Residual SE U-Net for 3D segmentation.

    As in MONAI's ``UNet`` (Kerfoot et al., 2018), the first level works at half
    resolution: ``channels[0]`` features at 1/2, ``channels[1]`` at 1/4, ..., the last two
    levels share the coarsest grid, and a final transposed convolution returns to full
    resolution. ``full_resolution_channels`` > 0 adds a level at full resolution, as in
    nnU-Net (Isensee et al., Nat Methods 2021): a block of that width on the input grid
    whose features skip to a last decoder block, so that the finest features are one
    voxel wide rather than two (thin structures: spinal cord, oesophagus, larynx).

    ``deep_supervision`` adds a 1x1x1 logit head to the decoder outputs at 1/2 and 1/4
    resolution (nnU-Net's deep supervision); in training mode ``forward`` then returns
    the full-resolution logits followed by those heads' logits, in eval mode the
    full-resolution logits alone.

    Args:
        in_channels: image channels (1 for CT).
        out_channels: one logit channel per structure (sigmoid, multi-label).
        channels: widths per level, e.g. (16, 32, 64, 96, 128).
        residual, se: keep the identity paths and the SE layers of every block; both
            False gives the plain U-Net baseline of the ablation.
        full_resolution_channels: width of the full-resolution level; 0 for none.
        deep_supervision: add the 1/2 and 1/4 resolution heads.
        spatial_dims: 3 (volumes, 3x3x3 kernels) or 2 (slices or radiographs, 3x3
            kernels, input (B, in_channels, X, Y)), as the thesis ran it on radiographs.

    Input (B, in_channels, X, Y, Z) with X, Y, Z divisible by ``divisor`` =
    ``2 ** (len(channels) - 1)``; output (B, out_channels, X, Y, Z) logits (in training
    with deep supervision: a tuple of (B, out_channels, X/s, Y/s, Z/s) for s = 1, 2, 4).

    Raises:
        ValueError: fewer than three levels, a non-positive width, a negative
            ``full_resolution_channels``, ``spatial_dims`` not 2 or 3, or (in ``forward``) an input that is not 5D or
            not divisible by ``divisor``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64, 96, 128),
        residual: bool = True,
        se: bool = True,
        full_resolution_channels: int = 0,
        deep_supervision: bool = False,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        d = self.spatial_dims = spatial_dims
        if full_resolution_channels < 0:
            raise ValueError(f"full_resolution_channels must be >= 0, got {full_resolution_channels}")
        if len(channels) < 3 or any(c <= 0 for c in channels):
            raise ValueError(f"channels must hold at least three positive widths, got {channels}")
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError(f"bad channel counts: in={in_channels}, out={out_channels}")
        self.divisor = 2 ** (len(channels) - 1)
        widths = list(channels)
        full = full_resolution_channels
        block: dict[str, Any] = {"residual": residual, "se": se, "spatial_dims": d}
        self.stem = ResSEBlock(in_channels, full, **block) if full else None
        self.down = nn.ModuleList()
        self.encoders = nn.ModuleList()
        c_prev = full or in_channels
        for c in widths[:-1]:
            self.down.append(
                Convolution(
                    d,
                    c_prev,
                    c,
                    strides=2,
                    kernel_size=3,
                    act="LEAKYRELU",
                    norm="INSTANCE",
                )
            )
            self.encoders.append(ResSEBlock(c, c, **block))
            c_prev = c
        self.bottom = ResSEBlock(widths[-2], widths[-1], **block)
        self.decoders = nn.ModuleList()
        self.up = nn.ModuleList()
        c_deep = widths[-1]
        for level in range(len(widths) - 2, -1, -1):
            c_skip = widths[level]
            c_out = widths[level - 1] if level > 0 else widths[0]
            self.decoders.append(ResSEBlock(c_deep + c_skip, c_out, **block))
            # Without a full-resolution level the last transposed convolution gives logits.
            final = level == 0 and not full
            self.up.append(
                Convolution(
                    d,
                    c_out,
                    out_channels if final else (full if level == 0 else c_out),
                    strides=2,
                    kernel_size=3,
                    is_transposed=True,
                    act="LEAKYRELU",
                    norm="INSTANCE",
                    conv_only=final,
                    padding=1,
                    output_padding=1,
                )
            )
            c_deep = c_out
        self.full_decoder: nn.Module | None = None
        self.head: nn.Module | None = None
        if full:
            self.full_decoder = ResSEBlock(2 * full, full, **block)
            self.head = Convolution(d, full, out_channels, kernel_size=1, conv_only=True)
        # Deep supervision heads on the decoder outputs at 1/2 and 1/4 resolution (the
        # decoders of levels 0 and 1 both give widths[0] channels).
        self.deep_heads = nn.ModuleList(
            Convolution(d, widths[0], out_channels, kernel_size=1, conv_only=True)
            for _ in range(2 if deep_supervision else 0)
        )

    def keep_outputs(self, indices: Sequence[int]) -> None:
        """Keep only the output channels ``indices`` (in that order), in place.

        The outputs are independent sigmoid channels and the last layer is a convolution,
        so the kept channels give exactly the logits they gave before: one network trained
        on organs and targets can be served as an organs-only model.

        Raises:
            ValueError: an index outside the network's output channels, or none given.
        """
        heads = [self.head] if self.head is not None else []
        heads += list(self.deep_heads)
        outputs = [(h.conv, 0) for h in heads]
        if self.head is None:  # the last transposed convolution gives the logits
            outputs.append((self.up[-1].conv, 1))  # ConvTranspose weight: (in, out, ...)
        n = outputs[0][0].weight.shape[outputs[0][1]]
        index = list(indices)
        if not index or any(not 0 <= i < n for i in index):
            raise ValueError(f"output channels must be in 0..{n - 1}, got {index}")
        keep = torch.tensor(index)
        for conv, axis in outputs:
            conv.weight = nn.Parameter(conv.weight.detach().index_select(axis, keep).clone())
            if conv.bias is not None:
                conv.bias = nn.Parameter(conv.bias.detach().index_select(0, keep).clone())
            conv.out_channels = len(index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 + self.spatial_dims or any(s % self.divisor for s in x.shape[2:]):
            axes = "X, Y, Z" if self.spatial_dims == 3 else "X, Y"
            raise ValueError(f"expected (B, C, {axes}) with {axes} divisible by {self.divisor}, got {tuple(x.shape)}")
        h = x if self.stem is None else self.stem(x)
        full_skip = h
        skips = []
        for down, enc in zip(self.down, self.encoders):
            h = enc(down(h))
            skips.append(h)
        h = self.bottom(h)
        decoded = []  # decoder outputs, coarse to fine; the last is at 1/2
        for i, (dec, up) in enumerate(zip(self.decoders, self.up)):
            h = dec(torch.cat([h, skips.pop()], dim=1))
            decoded.append(h)
            if i < len(self.up) - 1:
                h = up(h)
        h = self.up[-1](h)
        if self.full_decoder is not None and self.head is not None:
            h = self.head(self.full_decoder(torch.cat([h, full_skip], dim=1)))
        if not (self.training and len(self.deep_heads)):
            return h
        return (h, *(head(d) for head, d in zip(self.deep_heads, decoded[::-1])))
