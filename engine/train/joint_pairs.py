"""Image pairs for training and scoring the joint models, on the working grid.

Two kinds of pair, both cropped to ``size`` voxels (D, H, W) of the cached 4 mm grid
(``engine.train.segmentation.cache_case``: RAS, HU window scaled to [0, 1]):

* inter-patient (atlas-style propagation): two different cases of one split, each crop
  centred on the centroid of its own contoured organs. This centring is a translation
  pre-alignment that uses the contours of both images; it stands in for the affine
  pre-alignment ``propagate`` runs before a joint model, and makes the figures
  optimistic about it.
* synthetic daily scan: a case (moving) and the same case deformed by a known smooth
  random DDF plus a small rigid motion and noise (fixed), the field of the synthetic
  daily scans of docs/registration.md (``engine.train.synthetic_deformation.random_field``),
  so the true DDF is known and a registration error in mm can be measured
  (``synthetic_ddf``).

The structure masks of a pair are the model's structures in order, then PTV70 (the
tumour mask of the dual-head loss).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.infer.displacement import Grid, ddf_mm_to_voxels
from engine.models.joint.base import warp_image, warp_masks
from engine.train.openkbp import case_rois, load_split
from engine.train.segmentation import cache_case
from engine.train.synthetic_deformation import DEFAULTS, random_field

FIELD_PARAMETERS = ("max_mm", "smoothing_mm", "rotation_deg", "shift_mm")

PTV = {
    "label": 99,
    "name": "PTV70",
    "source": "PTV70",
    "color": [255, 0, 0],
    "type": "PTV",
}


def load_cases(data: Path, split: str, model: dict, cache: Path) -> list[dict]:
    """Cached cases of ``split`` on the model's grid: dicts with ``image`` (D, H, W)
    float16 in [0, 1], ``masks`` (C + 1, D, H, W) uint8 (the structures, then PTV70) and
    ``available`` (C + 1,) bool. Resampling happens once per case and grid."""
    config = {**model, "structures": list(model["structures"]) + [PTV]}
    rois = case_rois(data)
    cache.mkdir(parents=True, exist_ok=True)
    return [cache_case(data, c, config, cache) for c in load_split(data, split) if c in rois]


def organ_centre(case: dict) -> np.ndarray:
    """Centroid (voxels) of the contoured organs (PTV70 excluded), or the grid centre."""
    organs = case["masks"][:-1][case["available"][:-1]]
    if organs.size and organs.any():
        return np.argwhere(organs.any(axis=0)).mean(axis=0)
    return (np.array(case["image"].shape) - 1) / 2


def crop(case: dict, centre: np.ndarray, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(image (1, *size) float32, masks (C + 1, *size) float32) centred on ``centre``,
    zero-padded where the crop leaves the image."""
    image, masks = case["image"], case["masks"]
    out_i = np.zeros((1, *size), dtype=np.float32)
    out_m = np.zeros((masks.shape[0], *size), dtype=np.float32)
    src, dst = [], []
    for c, s, n in zip(centre, size, image.shape, strict=True):
        start = round(float(c)) - s // 2
        lo, hi = max(start, 0), min(start + s, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    into: tuple[Any, ...] = (0, *dst)
    out_i[into] = image[tuple(src)]
    out_m[(slice(None), *dst)] = masks[(slice(None), *src)]
    return out_i, out_m


def synthetic_ddf(size: Sequence[int], rng: np.random.Generator, spacing_mm: float = 4.0) -> torch.Tensor:
    """The ground-truth field of a synthetic daily scan on a crop of ``size`` voxels
    (D, H, W) of ``spacing_mm``: ``engine.train.synthetic_deformation.random_field`` with its
    defaults (smooth field of 8 mm at most, sigma 20 mm; rotation up to 2 degrees,
    shift up to 4 mm per axis), the order of inter-fraction head-and-neck changes
    (parotid shrinkage, neck flexion, set-up error) -> (3, *size) in voxels."""
    grid = Grid(tuple(int(n) for n in size), np.diag([spacing_mm] * 3 + [1.0]))
    ddf_mm, _ = random_field(grid, rng, **{k: DEFAULTS[k] for k in FIELD_PARAMETERS})
    return ddf_mm_to_voxels(ddf_mm, grid.affine)


def _pair_dict(fixed, f_masks, f_avail, moving, m_masks, m_avail, ddf=None) -> dict:
    pair = {
        "fixed": fixed,
        "moving": moving,
        "fixed_masks": f_masks[:-1],
        "moving_masks": m_masks[:-1],
        "fixed_available": torch.as_tensor(f_avail[:-1]),
        "moving_available": torch.as_tensor(m_avail[:-1]),
        "fixed_ptv": f_masks[-1:] * float(f_avail[-1]),
        "moving_ptv": m_masks[-1:] * float(m_avail[-1]),
    }
    if ddf is not None:
        pair["true_ddf"] = ddf
    return pair


def inter_patient_pair(
    fixed_case: dict,
    moving_case: dict,
    size: Sequence[int],
    jitter: np.ndarray | None = None,
) -> dict:
    """Two cases, each cropped around its organ centroid (``jitter`` voxels added to both)."""
    shift = np.zeros(3) if jitter is None else jitter
    f_img, f_masks = crop(fixed_case, organ_centre(fixed_case) + shift, size)
    m_img, m_masks = crop(moving_case, organ_centre(moving_case) + shift, size)
    return _pair_dict(
        torch.as_tensor(f_img),
        torch.as_tensor(f_masks),
        fixed_case["available"],
        torch.as_tensor(m_img),
        torch.as_tensor(m_masks),
        moving_case["available"],
    )


def synthetic_pair(
    case: dict,
    size: Sequence[int],
    rng: np.random.Generator,
    spacing_mm: float = 4.0,
    jitter: np.ndarray | None = None,
    noise: float = 0.01,
) -> dict:
    """The case (moving) and its deformation by ``synthetic_ddf`` (fixed), Gaussian
    noise of sd ``noise`` added: fixed(x) = moving(x + ddf(x)), so the returned
    ``true_ddf`` (3, *size) is what a registration should recover. Masks of the fixed
    image are the moving masks warped as probabilities and thresholded at 0.5."""
    centre = organ_centre(case) + (np.zeros(3) if jitter is None else jitter)
    m_img, m_masks = crop(case, centre, size)
    moving, m_masks = torch.as_tensor(m_img), torch.as_tensor(m_masks)
    ddf = synthetic_ddf(size, rng, spacing_mm)
    fixed = warp_image(moving[None], ddf[None])[0]
    fixed = fixed + torch.as_tensor(rng.normal(0, noise, fixed.shape), dtype=fixed.dtype)
    f_masks = (warp_masks(m_masks[None], ddf[None])[0] > 0.5).float()
    return _pair_dict(
        fixed.clamp(0, 1),
        f_masks,
        case["available"],
        moving,
        m_masks,
        case["available"],
        ddf,
    )


def collate(pairs: list[dict]) -> dict:
    """Stack pairs into a batch: images (B, 1, ...), masks (B, C, ...), available (B, C)."""
    keys = set.intersection(*(set(p) for p in pairs))
    return {k: torch.stack([p[k] for p in pairs]) for k in keys}


def evaluation_pairs(
    cases: list[dict], size: Sequence[int], n_inter: int, n_synthetic: int, seed: int
) -> list[tuple[str, dict]]:
    """Fixed pairs for validation or test: (name, pair). Inter-patient pairs take cases
    (0, 1), (2, 3), ...; synthetic pairs deform cases 0, 1, ... with seeds seed + k."""
    pairs = []
    for k in range(min(n_inter, len(cases) // 2)):
        f, m = cases[2 * k], cases[2 * k + 1]
        pairs.append((f"{f['case']}<-{m['case']}", inter_patient_pair(f, m, size)))
    for k in range(min(n_synthetic, len(cases))):
        rng = np.random.default_rng([seed, k])
        pairs.append((f"{cases[k]['case']}-synthetic", synthetic_pair(cases[k], size, rng)))
    return pairs
