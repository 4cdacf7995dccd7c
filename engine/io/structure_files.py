"""Imported ROIs to files: one NIfTI mask per ROI and a ``structures.json`` index."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.io.nifti import write_nifti
from engine.io.rtstruct_import import ImportedROI
from engine.results import ResultFolder, safe_file_stem
from engine.volume import LabelMap


def write_roi_masks(rois: Sequence[ImportedROI], affine: np.ndarray, out_dir: str | os.PathLike) -> list[dict]:
    """Write ``out_dir/<ROI>.nii.gz`` (uint8 0/1, (I, J, K) with RAS ``affine`` in mm)
    per ROI and ``out_dir/structures.json``; returns the JSON's entries.

    Each entry: roi_number, name, file, interpreted_type, color ([r, g, b] or null),
    volume_cm3, contours (how many were filled in) and notes.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folder = ResultFolder(out_dir)
    taken = {Path(folder.STRUCTURES).stem}  # keep structures.json for the index
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
    folder.write_json(folder.STRUCTURES, entries)
    return entries
