"""Axial slices of the OpenKBP CTs for the 2D noisy-label experiments (docs/noisy-labels.md).

Pick-and-Learn (Zhu, Shi and Wu, MICCAI 2019) was defined on whole 2D images in real
batches; this is the closest our data comes: every axial slice (128 x 128 pixels, as
OpenKBP resampled the CTs) that shows at least one of the chosen structures, of the
patients of a split in whom every chosen structure is contoured, so that an image's
labels are complete, as the radiographs' were.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from engine.train.openkbp import case_rois, load_case, load_split


def _window(hu: np.ndarray, window_hu: list[float]) -> np.ndarray:
    lo, hi = window_hu
    return np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def slice_cases(data: Path, splits: list[str], structures: list[dict]) -> list[str]:
    """The cases of ``splits`` in which every structure is contoured (``manifest.json``)."""
    rois = case_rois(data)
    wanted = {s["source"] for s in structures}
    return [c for split in splits for c in load_split(data, split) if wanted <= set(rois.get(c, ()))]


def load_slices(data: Path, splits: list[str], structures: list[dict], window_hu: list[float], cache: Path) -> dict:
    """The axial slices of ``splits``' complete cases that show a structure.

    Returns {"image": (N, 1, X, Y) float16 in [0, 1] (HU windowed to ``window_hu``),
    "masks": (N, C, X, Y) uint8, "case": (N,) index into "cases", "cases": case ids,
    "spacing": (number of cases, 2) float, each case's pixel spacing along X and Y in mm}.
    Written once to ``cache`` (an ``.npz`` per split list and structure list) and read
    from there after.
    """
    key = json.dumps([splits, [s["source"] for s in structures], window_hu, "spacing"])
    path = Path(cache) / f"slices-{hashlib.sha1(key.encode()).hexdigest()[:10]}.npz"
    if not path.exists():
        cases = slice_cases(data, splits, structures)
        images, masks, owner, spacing = [], [], [], []
        for k, case in enumerate(cases):
            ct, m, _ = load_case(data, case, structures)  # (I, J, K), (C, I, J, K)
            shown = np.flatnonzero(m.any(axis=(0, 1, 2)))  # axial slices along K
            images.append(_window(ct.array[:, :, shown], window_hu).transpose(2, 0, 1)[:, None])
            masks.append(m[:, :, :, shown].transpose(3, 0, 1, 2).astype(np.uint8))
            owner.append(np.full(len(shown), k))
            spacing.append(ct.spacing[:2])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            image=np.concatenate(images).astype(np.float16),
            masks=np.concatenate(masks),
            case=np.concatenate(owner),
            cases=np.array(cases),
            spacing=np.array(spacing, dtype=np.float64),
        )
        tmp.rename(path)
    with np.load(path) as z:
        return {
            "image": z["image"],
            "masks": z["masks"],
            "case": z["case"],
            "cases": [str(c) for c in z["cases"]],
            "spacing": z["spacing"],
        }
