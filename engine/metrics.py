"""Agreement of two masks in physical space: Dice, mean surface distance and HD95 (mm).

MONAI metrics (``compute_dice``, ``compute_average_surface_distance`` symmetric,
``compute_hausdorff_distance`` with ``percentile=95``) on the voxel spacing of the
masks' grid, so distances are in mm. Shared by the contour audit and contour propagation.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
)

# Voxels kept around the masks' common bounding box: the surfaces must not touch the
# edge of the cropped arrays, or MONAI would see a border that is not there.
_CROP_MARGIN = 2


def _crop_to_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    both = a | b
    box = []
    for axis, ix in enumerate(np.nonzero(both)):
        lo = max(int(ix.min()) - _CROP_MARGIN, 0)
        hi = min(int(ix.max()) + _CROP_MARGIN + 1, both.shape[axis])
        box.append(slice(lo, hi))
    pad = [(_CROP_MARGIN, _CROP_MARGIN)] * 3
    return np.pad(a[tuple(box)], pad), np.pad(b[tuple(box)], pad)


def surface_metrics(
    a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]
) -> tuple[float, float | None, float | None]:
    """Dice, symmetric mean surface distance (mm) and HD95 (mm) of two bool masks.

    ``a`` and ``b`` are bool arrays (I, J, K) on one grid of voxel ``spacing`` (mm along
    I, J, K). Distances are rounded to 0.01 mm and None when either mask is empty (Dice
    is then 0, or 1 when both are). The masks are cropped to their common bounding box
    first, which changes no value and makes large grids cheap.
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if not a.any() and not b.any():
        return 1.0, None, None
    a, b = _crop_to_union(a, b)
    p, t = torch.as_tensor(a[None, None]), torch.as_tensor(b[None, None])
    dice = float(compute_dice(p, t, include_background=True, ignore_empty=False)[0, 0])
    if not a.any() or not b.any():
        return dice, None, None
    msd = compute_average_surface_distance(
        p, t, include_background=True, symmetric=True, spacing=spacing
    )
    hd95 = compute_hausdorff_distance(
        p, t, include_background=True, percentile=95, spacing=spacing
    )
    return dice, round(float(msd[0, 0]), 2), round(float(hd95[0, 0]), 2)
