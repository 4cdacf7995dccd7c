"""Imported ROIs to files: one NIfTI mask per ROI and a ``structures.json`` index."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.io.atomic import write_atomically
from engine.io.nifti import write_nifti
from engine.io.rtstruct_import import ImportedROI
from engine.volume import LabelMap

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def safe_file_stem(name: str, roi_number: int, taken: set[str]) -> str:
    """A file name stem for an ROI name: letters, digits and ``._+-`` only, no leading
    dot, at most 64 characters, unique (case-insensitively) among ``taken``, which is
    updated. Falls back to ``roi_<number>`` for a name with nothing usable."""
    stem = _UNSAFE.sub("_", name).strip("._")[:64] or f"roi_{roi_number}"
    if stem.lower() in taken:
        stem = f"{stem}_{roi_number}"
    while stem.lower() in taken:  # the suffixed name may itself be an ROI's name
        stem += "_"
    taken.add(stem.lower())
    return stem


def write_roi_masks(
    rois: Sequence[ImportedROI], affine: np.ndarray, out_dir: str | os.PathLike
) -> list[dict]:
    """Write ``out_dir/<ROI>.nii.gz`` (uint8 0/1, (I, J, K) with RAS ``affine`` in mm)
    per ROI and ``out_dir/structures.json``; returns the JSON's entries.

    Each entry: roi_number, name, file, interpreted_type, color ([r, g, b] or null),
    volume_cm3, contours (how many were filled in) and notes.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = {"structures"}  # keep structures.json for the index
    entries = []
    for roi in rois:
        labels = LabelMap(roi.mask.astype(np.uint8), affine)
        file = f"{safe_file_stem(roi.name, roi.roi_number, taken)}.nii.gz"
        write_nifti(labels, out / file)
        entries.append(
            {
                "roi_number": roi.roi_number,
                "name": roi.name,
                "file": file,
                "interpreted_type": roi.interpreted_type,
                "color": list(roi.color) if roi.color else None,
                "volume_cm3": round(roi.volume_cm3(labels.voxel_volume_mm3), 3),
                "contours": roi.contours,
                "notes": list(roi.notes),
            }
        )
    text = json.dumps(entries, indent=1)
    write_atomically(out / "structures.json", lambda tmp: Path(tmp).write_text(text))
    return entries
