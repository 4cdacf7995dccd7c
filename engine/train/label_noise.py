"""The label-noise protocol of the noisy-label experiments (docs/noisy-labels.md).

A fraction ``p`` of the training cases is chosen with a fixed seed; in each chosen case,
every structure is dilated or eroded (a fair coin per structure) by a ball whose radius in
mm is drawn per structure, uniformly from a range (the "small" or the "large" range). The
ball is round in mm on anisotropic grids: dilation and erosion are thresholds of the
Euclidean distance transform in mm (the same sets as morphology with an mm-round ball,
in linear time whatever the radius). Validation
and test labels are never corrupted. This follows the corruption protocol of Zhu, Shi and
Wu (MICCAI 2019), who dilated or eroded the lung, heart and clavicle masks of a fraction of
the JSRT training images, here in 3D and in physical units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

RANGES_MM = {"small": (2.0, 8.0), "large": (5.0, 13.0)}
# The thesis's ranges in pixels, for 2D slices (whole pixels: 1-8 and 5-13).
RANGES_PX = {"small": (1, 8), "large": (5, 13)}


@dataclass(frozen=True)
class Corruption:
    """What was done to one structure of one case: 'dilate' or 'erode' by ``radius_mm``."""

    structure: int
    operation: str
    radius_mm: float


def noisy_cases(cases: Sequence[str], fraction: float, seed: int) -> set[str]:
    """The ``round(fraction x N)`` training cases whose labels are corrupted (fixed seed).

    Raises:
        ValueError: ``fraction`` outside [0, 1].
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the noise fraction must be in [0, 1], got {fraction}")
    order = sorted(cases)
    chosen = np.random.default_rng(seed).permutation(len(order))[: round(fraction * len(order))]
    return {order[i] for i in chosen}


def corrupt_masks(
    masks: np.ndarray,
    spacing_mm: Sequence[float],
    radius_range_mm: tuple[float, float],
    rng: np.random.Generator,
    available: np.ndarray | None = None,
    whole_units: bool = False,
) -> tuple[np.ndarray, list[Corruption]]:
    """Dilate or erode each structure of one case; returns the new masks and what was done.

    ``masks`` (C, X, Y, Z) 0/1 on a grid of ``spacing_mm`` (or (C, X, Y) for a slice, with
    two spacings; (1.0, 1.0) and ``RANGES_PX`` for radii in pixels); structures not
    ``available`` (not contoured in this case) are left alone. Structures are corrupted
    independently, as a physician's imprecise contour of one organ says nothing of the
    next. ``whole_units``: radii are whole numbers (pixels, as the thesis drew them),
    uniform over ``low..high`` inclusive.
    """
    low, high = radius_range_mm
    out = masks.copy()
    record = []
    for c in range(masks.shape[0]):
        if (available is not None and not available[c]) or not masks[c].any():
            continue
        if whole_units:
            radius = float(rng.integers(int(low), int(high) + 1))
        else:
            radius = float(rng.uniform(low, high))
        operation = "dilate" if rng.random() < 0.5 else "erode"
        inside = masks[c] > 0
        if operation == "dilate":
            grown = ndimage.distance_transform_edt(~inside, sampling=spacing_mm) <= radius
        else:
            grown = ndimage.distance_transform_edt(inside, sampling=spacing_mm) > radius
        out[c] = grown.astype(masks.dtype)
        record.append(Corruption(c, operation, round(radius, 3)))
    return out, record
