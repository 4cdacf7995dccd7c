"""The OpenKBP dataset as laid out in ``shared/data/openkbp`` (Babier et al., Med Phys 2021)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine.io.nifti import read_labels, read_volume
from engine.volume import LabelMap, Volume


def load_split(data: Path, split: str) -> list[str]:
    """Case ids of ``split`` (train, val or test) from ``split.json``."""
    splits = json.loads((Path(data) / "split.json").read_text())
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(splits)}")
    return list(splits[split])


def case_rois(data: Path) -> dict[str, list[str]]:
    """ROI names (OpenKBP spelling) contoured in each case, from ``manifest.json``."""
    manifest = json.loads((Path(data) / "manifest.json").read_text())
    return {c["case"]: list(c["rois"]) for c in manifest["cases"]}


def load_case(data: Path, case: str, structures: list[dict]) -> tuple[Volume, np.ndarray, np.ndarray]:
    """CT, one mask per structure, and which structures are contoured.

    Returns (ct, masks, available): ``masks`` bool (n_structures, I, J, K) on the CT grid
    (structures may overlap), ``available`` bool (n_structures,). A structure missing
    from the case is unknown, not absent: it must not be scored or trained as background.
    """
    case_dir = Path(data) / case
    ct = read_volume(case_dir / "ct.nii.gz")
    masks = np.zeros((len(structures), *ct.array.shape), dtype=bool)
    available = np.zeros(len(structures), dtype=bool)
    for i, s in enumerate(structures):
        mask_path = case_dir / f"mask_{s['source']}.nii.gz"
        if mask_path.exists():
            masks[i] = read_labels(mask_path).array > 0
            available[i] = True
    return ct, masks, available


def masks_to_bitfield(masks: np.ndarray, affine: np.ndarray) -> LabelMap:
    """Pack (C, I, J, K) overlapping masks (C <= 15) into one label map, bit i = structure i,
    so nearest-neighbour resampling keeps every structure."""
    if masks.shape[0] > 15:
        raise ValueError(f"at most 15 structures fit in the bitfield, got {masks.shape[0]}")
    bits = np.zeros(masks.shape[1:], dtype=np.int16)
    for i in range(masks.shape[0]):
        bits |= masks[i].astype(np.int16) << i
    return LabelMap(bits, affine)
