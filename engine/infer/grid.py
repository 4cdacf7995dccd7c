"""Resampling between an input's grid and a model's grid (MONAI transforms).

The model grid is the input reoriented to ``axcodes`` (RAS) and resampled to the
model's spacing in mm. Intensities are resampled linearly, label maps with nearest
neighbour, and structure probabilities linearly (then thresholded), so integer labels
are never interpolated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Orientation, ResampleToMatch, ScaleIntensityRange, Spacing

from engine.volume import LabelMap, Volume


def _meta(array: np.ndarray, affine: np.ndarray) -> MetaTensor:
    return MetaTensor(
        torch.as_tensor(array)[None],
        affine=torch.as_tensor(affine, dtype=torch.float64),
    )


def image_to_model_grid(
    volume: Volume,
    spacing_mm: Sequence[float],
    window_hu: Sequence[float],
    axcodes: str = "RAS",
) -> MetaTensor:
    """CT volume -> normalised image on the model grid.

    Returns a MetaTensor of shape (1, X, Y, Z), float32, HU clipped to ``window_hu`` and
    scaled to [0, 1], whose ``affine`` maps model voxels to RAS mm.
    """
    img = _meta(volume.array.astype(np.float32), volume.affine)
    img = Orientation(axcodes=axcodes)(img)
    img = Spacing(pixdim=tuple(spacing_mm), mode="bilinear", padding_mode="border")(img)
    lo, hi = window_hu
    return ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)(img)


def labels_to_model_grid(
    labels: LabelMap, spacing_mm: Sequence[float], axcodes: str = "RAS"
) -> MetaTensor:
    """Label map -> (1, X, Y, Z) label MetaTensor on the model grid (nearest neighbour)."""
    lab = _meta(labels.array.astype(np.int16), labels.affine)
    lab = Orientation(axcodes=axcodes)(lab)
    return Spacing(pixdim=tuple(spacing_mm), mode="nearest")(lab)


def probabilities_to_input_grid(
    probabilities: MetaTensor, reference: Volume
) -> torch.Tensor:
    """Resample (C, X, Y, Z) probabilities on the model grid onto ``reference``'s grid.

    Returns a float32 tensor of shape (C, I, J, K) on the reference grid (linear
    interpolation, zero outside the model's field of view).
    """
    template = MetaTensor(
        torch.zeros((1, *reference.array.shape), dtype=torch.float32),
        affine=torch.as_tensor(reference.affine, dtype=torch.float64),
    )
    out = ResampleToMatch(mode="bilinear", padding_mode="zeros")(
        probabilities, img_dst=template
    )
    return out.as_tensor().float()
