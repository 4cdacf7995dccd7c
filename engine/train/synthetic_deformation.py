"""Daily-scan stand-ins with a known deformation: a real CT deformed by a smooth field.

No repeat CT of one patient is available (``../shared/data/README.md``), so a "daily"
scan is made from a planning CT: daily(p) = planning(p + u(p)) + noise on the planning
CT's grid, where u is the ground-truth displacement in the propagation convention
(``engine.infer.displacement``: daily = fixed point p <-> planning = moving point
p + u(p), mm along R, A, S).

u is the sum of
* a smooth random field: independent Gaussian noise per R/A/S component on the CT grid,
  smoothed by a Gaussian of ``smoothing_mm`` standard deviation (``scipy.ndimage``,
  per-axis sigma from the voxel spacing), scaled so that its largest displacement is
  exactly ``max_mm``;
* a small rigid motion: a rotation of up to ``rotation_deg`` about a random axis through
  the image centre, and a translation of up to ``shift_mm`` along each axis.

Gaussian noise of ``noise_hu`` standard deviation is added to the daily CT. Labels are
warped as one-hot probabilities (``warp_labels``), so the daily truth labels follow u.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

from engine.infer.displacement import (
    Grid,
    ddf_mm_to_voxels,
    jacobian_determinant,
    warp_image,
    warp_labels,
)
from engine.volume import LabelMap, Volume

DEFAULTS = {
    "max_mm": 8.0,
    "smoothing_mm": 20.0,
    "rotation_deg": 2.0,
    "shift_mm": 4.0,
    "noise_hu": 20.0,
}
AIR_HU = -1024.0


@dataclass(frozen=True)
class SyntheticPair:
    """``daily`` and ``daily_labels`` on the planning CT's grid; ``ddf_mm`` (I, J, K, 3)
    the true field (mm, RAS) on that grid; ``params`` what was drawn."""

    daily: Volume
    daily_labels: LabelMap
    ddf_mm: np.ndarray
    params: dict


def _world(grid: Grid) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), -1)
    return ijk @ grid.affine[:3, :3].T + grid.affine[:3, 3]


def smooth_random_field(grid: Grid, rng: np.random.Generator, max_mm: float, smoothing_mm: float) -> np.ndarray:
    """A smooth random displacement (I, J, K, 3) in mm (RAS) with maximum norm ``max_mm``."""
    spacing = np.linalg.norm(grid.affine[:3, :3], axis=0)
    sigma = smoothing_mm / spacing
    field = np.stack(
        [gaussian_filter(rng.standard_normal(grid.shape), sigma, mode="reflect") for _ in range(3)],
        axis=-1,
    )
    return (field * (max_mm / np.linalg.norm(field, axis=-1).max())).astype(np.float32)


def rigid_field(grid: Grid, rotation: np.ndarray, translation_mm) -> np.ndarray:
    """u(p) = R (p - c) + c + t - p on ``grid`` (c its centre) -> (I, J, K, 3) mm."""
    world = _world(grid)
    centre = grid.affine[:3, :3] @ ((np.asarray(grid.shape) - 1) / 2.0) + grid.affine[:3, 3]
    moved = (world - centre) @ rotation.T + centre + np.asarray(translation_mm)
    return (moved - world).astype(np.float32)


def random_field(
    grid: Grid,
    rng: np.random.Generator,
    max_mm: float,
    smoothing_mm: float,
    rotation_deg: float,
    shift_mm: float,
) -> tuple[np.ndarray, dict]:
    """The ground-truth displacement of a synthetic daily scan on ``grid``: a
    ``smooth_random_field`` plus a ``rigid_field`` (rotation up to ``rotation_deg``
    about a random axis through the grid centre, translation up to ``shift_mm`` per
    axis) -> ((I, J, K, 3) mm RAS, what was drawn: rotation axis and angle, shift,
    largest displacement and smallest Jacobian determinant)."""
    axis = rng.standard_normal(3)
    axis = axis / np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg))
    rotation = Rotation.from_rotvec(axis * angle).as_matrix()
    shift = rng.uniform(-shift_mm, shift_mm, size=3)
    ddf = smooth_random_field(grid, rng, max_mm, smoothing_mm)
    ddf += rigid_field(grid, rotation, shift)
    det = jacobian_determinant(ddf_mm_to_voxels(ddf, grid.affine))
    return ddf, {
        "rotation_axis": [round(float(a), 4) for a in axis],
        "rotation_deg_drawn": round(float(np.rad2deg(angle)), 3),
        "shift_mm_drawn": [round(float(s), 3) for s in shift],
        "max_displacement_mm": round(float(np.linalg.norm(ddf, axis=-1).max()), 3),
        "min_jacobian": round(float(det.min()), 4),
    }


def make_pair(
    planning: Volume,
    labels: LabelMap,
    values: list[int],
    seed: int,
    **params: float,
) -> SyntheticPair:
    """A synthetic daily scan from ``planning`` (HU (I, J, K), RAS affine) and its truth.

    ``labels`` (on the planning grid) holds the structures ``values``; ``params``
    override ``DEFAULTS``. Deterministic for a given ``seed``.

    Raises:
        ValueError: the drawn field folds (Jacobian determinant <= 0 somewhere); lower
            ``max_mm`` or raise ``smoothing_mm``.
    """
    p = DEFAULTS | params
    rng = np.random.default_rng(seed)
    grid = Grid(tuple(planning.array.shape), np.asarray(planning.affine, dtype=float))
    ddf, drawn = random_field(grid, rng, p["max_mm"], p["smoothing_mm"], p["rotation_deg"], p["shift_mm"])
    if drawn["min_jacobian"] <= 0:
        raise ValueError("the random field folds; lower max_mm or raise smoothing_mm")
    daily = warp_image(planning.array, planning.affine, grid, ddf, outside=AIR_HU)
    daily += rng.normal(0.0, p["noise_hu"], size=daily.shape).astype(np.float32)
    daily_labels = warp_labels(labels, values, grid, ddf)
    drawn = p | {"seed": seed} | drawn
    return SyntheticPair(
        Volume(daily, planning.affine, meta={"source": "synthetic"}),
        LabelMap(daily_labels, labels.affine),
        ddf,
        drawn,
    )
