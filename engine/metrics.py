"""Agreement of two masks in physical space: Dice, mean surface distance and HD95 (mm).

The one place the engine measures contours: the contour audit, contour propagation,
evaluation of a model on a split, scoring of joint models, validation during training
and the RTSTRUCT round-trip check. NumPy and SciPy only, so an export checks itself
without PyTorch.

Definitions (those of MONAI's ``compute_dice``, ``compute_average_surface_distance``
with ``symmetric=True`` and ``compute_hausdorff_distance`` with ``percentile=95``):

* Dice = 2 |A and B| / (|A| + |B|), 1 when both masks are empty;
* the surface of a mask is its voxels with a neighbour outside it (the mask minus its
  binary erosion, face connectivity; outside the grid counts as outside);
* each surface voxel's distance to the other surface is the Euclidean distance in mm
  between voxel centres to the nearest surface voxel of the other mask (what
  ``scipy.ndimage.distance_transform_edt`` with the spacing gives, found here with a k-d
  tree of the surface voxels);
* MSD is the mean over both surfaces' distances; HD95 the larger of the two directed
  95th percentiles (linear interpolation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

# Voxels kept around the masks' common bounding box: the surfaces must not touch the
# edge of the cropped arrays, or the erosion would see a border that is not there.
_CROP_MARGIN = 1


@dataclass(frozen=True)
class Agreement:
    """Dice and, when both masks are non-empty, MSD and HD95 in mm (else None)."""

    dice: float
    msd_mm: float | None
    hd95_mm: float | None


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two bool masks of one shape; 1.0 when both are empty (nothing to miss)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 2.0 * int(np.count_nonzero(a & b)) / total if total else 1.0


def _crop_to_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    box = ndimage.find_objects((a | b).astype(np.uint8))[0]
    pad = [(_CROP_MARGIN, _CROP_MARGIN)] * a.ndim
    return np.pad(a[box], pad), np.pad(b[box], pad)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``a`` to the surface of ``b``, and from
    ``b``'s to ``a``'s, each in C order of the voxels. ``a``, ``b``: non-empty bool masks
    (I, J, K) of one grid whose voxel spacing is ``spacing`` (mm along I, J, K).

    The nearest surface voxel is found in a k-d tree of the surface voxels' centres in mm
    (``scipy.spatial.cKDTree``): the exact Euclidean distance that a distance transform
    of the other surface gives, in memory that grows with the surfaces, not with the
    masks' bounding box (a stray voxel far from a structure makes that box most of a
    512 x 512 x 200 grid, and a distance transform of it 400 MB and more).
    """
    a, b = _crop_to_union(np.asarray(a, dtype=bool), np.asarray(b, dtype=bool))
    mm = np.asarray(spacing, dtype=np.float64)
    points_a = np.argwhere(_surface(a)) * mm
    points_b = np.argwhere(_surface(b)) * mm
    to_b, _ = cKDTree(points_b).query(points_a)
    to_a, _ = cKDTree(points_a).query(points_b)
    return to_b, to_a


def agreement(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> Agreement:
    """Dice, MSD and HD95 (mm) of two bool masks on one grid of voxel ``spacing`` (mm);
    the distances are None when either mask is empty. The masks are cropped to their
    common bounding box first, which changes no value and makes large grids cheap."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    overlap = dice(a, b)
    if not a.any() or not b.any():
        return Agreement(overlap, None, None)
    a_to_b, b_to_a = surface_distances(a, b, spacing)
    msd = float(np.concatenate([a_to_b, b_to_a]).mean())
    hd95 = max(float(np.percentile(a_to_b, 95)), float(np.percentile(b_to_a, 95)))
    return Agreement(overlap, msd, hd95)


def surface_metrics(
    a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]
) -> tuple[float, float | None, float | None]:
    """(Dice, MSD, HD95) as :func:`agreement` gives them, distances rounded to 0.01 mm."""
    found = agreement(a, b, spacing)
    return (
        found.dice,
        None if found.msd_mm is None else round(found.msd_mm, 2),
        None if found.hd95_mm is None else round(found.hd95_mm, 2),
    )
