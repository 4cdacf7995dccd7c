"""Quality awareness (QAM) and overfitting control (OCM) for training on noisy labels.

Pick-and-Learn (Zhu, Shi and Wu, "Pick-and-Learn: Automatic Quality Evaluation for
Noisy-Labeled Image Segmentation", MICCAI 2019): a small network, the QAM, looks at
each (image, label) pair of a batch and gives it a raw quality score; the OCM bounds the
score, f(x) = lambda * tanh(x); a softmax over the batch turns the scores into weights,
and the segmentation loss is the weighted sum of the per-sample losses. Both networks are
trained by that loss: the QAM learns to give weight to the pairs the segmentation network
can fit, which are the clean ones.

Because f is bounded in [-lambda, lambda], two samples' weights differ at most by a factor
e^(2 lambda): no sample is silenced and none dominates (the OCM's "overfitting control").
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from torch import nn


class QualityAwarenessModule(nn.Module):
    """A CNN scoring an (image, label) pair: (B, 1 + C, X, Y, Z) -> (B,) raw scores
    (``spatial_dims=2``: (B, 1 + C, X, Y)).

    VGG-like, as the QAM of Zhu et al. (2019): strided 3x3(x3) convolutions (instance
    norm, leaky ReLU), then global average pooling and a linear layer. The input is the
    image concatenated with the C label channels (0/1) of the structures being scored.

    Raises:
        ValueError: ``in_channels`` < 2 (it needs the image and at least one label), or
            (in ``forward``) an input that is not (2 + spatial_dims)-D with
            ``in_channels`` channels.
    """

    def __init__(
        self,
        in_channels: int,
        channels: tuple[int, ...] = (8, 16, 32, 32),
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        if in_channels < 2:
            raise ValueError(f"the QAM needs the image and at least one label channel, got {in_channels}")
        self.in_channels, self.spatial_dims = in_channels, spatial_dims
        layers, c_prev = [], in_channels
        for c in channels:
            layers.append(
                Convolution(
                    spatial_dims,
                    c_prev,
                    c,
                    strides=2,
                    kernel_size=3,
                    act="LEAKYRELU",
                    norm="INSTANCE",
                )
            )
            c_prev = c
        self.features = nn.Sequential(*layers)
        self.score = nn.Linear(c_prev, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 + self.spatial_dims or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected (B, {self.in_channels}) + {self.spatial_dims} spatial axes, got {tuple(x.shape)}"
            )
        return self.score(self.features(x).flatten(2).mean(dim=2))[:, 0]


def overfitting_control(scores: torch.Tensor, lam: float) -> torch.Tensor:
    """OCM: lambda * tanh(scores), bounding every score to [-lambda, lambda].

    Raises:
        ValueError: ``lam`` is not positive.
    """
    if lam <= 0:
        raise ValueError(f"lambda must be positive, got {lam}")
    return lam * torch.tanh(scores)


def sample_weights(scores: torch.Tensor, lam: float | None) -> torch.Tensor:
    """Per-sample weights (B,) summing to 1: softmax over the batch of the (bounded) scores.

    ``lam`` None is the QAM alone (unbounded scores); a number applies the OCM first, so
    the largest weight is at most e^(2 lambda) times the smallest.
    """
    bounded = scores if lam is None else overfitting_control(scores, lam)
    return torch.softmax(bounded, dim=0)


def weighted_loss(per_sample: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The batch loss: sum over samples of weight x loss (both (B,)); a scalar.

    Weights from ``sample_weights`` sum to 1; plain training uses 1/B each.
    """
    if per_sample.shape != weights.shape:
        raise ValueError(f"losses {tuple(per_sample.shape)} and weights {tuple(weights.shape)} differ")
    return (per_sample * weights).sum()
