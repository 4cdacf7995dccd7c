"""Planning contours for propagation, from any of the forms a user has them in.

* an RTSTRUCT file, rasterised onto the planning (moving) DICOM series
  (``engine.io.rtstruct_import``);
* a folder as ``python -m engine segment`` writes it: ``labels.nii.gz`` with
  ``structures.json`` (label, name, colour per structure), or that label map file itself
  with ``structures.json`` beside it;
* a folder of one NIfTI mask per ROI (non-zero = inside), as ``python -m engine
  contours`` writes it; a ``structures.json`` there with ``file``/``name`` entries gives
  the ROI names, else the file names do.

One label map holds them all (0 = background). Where ROIs overlap (an organ inside a
PTV) a voxel can keep only one label: the ROIs are painted largest first, so a smaller
structure stays whole and the larger one loses the overlap; a note says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import numpy as np
from scipy import ndimage

from engine.errors import InputError
from engine.io.dicom_series import DicomSeries
from engine.io.nifti import NiftiError, read_labels
from engine.io.reader import is_nifti
from engine.io.rtstruct_import import import_rtstruct, read_rtstruct
from engine.results import ResultFolder
from engine.structure import Structure
from engine.volume import LabelMap

# Colours for ROIs that come without one (RTSTRUCT ROI Display Color is optional).
PALETTE = [
    (255, 170, 0),
    (0, 170, 255),
    (0, 255, 128),
    (255, 85, 170),
    (170, 85, 255),
    (255, 255, 0),
    (230, 230, 230),
    (255, 64, 64),
]


def _structure(label: int, name: str, color, kind: str = "") -> Structure:
    """A structure to propagate; without a colour, one from ``PALETTE``; ``kind``: its
    RT ROI Interpreted Type as given (empty when the contours give none)."""
    r, g, b = (int(c) for c in color) if color else PALETTE[(label - 1) % len(PALETTE)]
    return Structure(label, name, (r, g, b), kind)


Box = tuple[slice, slice, slice]


def _boxed(mask: np.ndarray) -> tuple[Box, np.ndarray]:
    """(box, ``mask`` inside it) of a bool mask (I, J, K); an empty box when it is empty."""
    found = ndimage.find_objects(mask.view(np.uint8))
    box = found[0] if found else (slice(0, 0),) * 3
    return box, mask[box]


def _paint(
    boxed: list[tuple[Box, np.ndarray]],
    structures: list[Structure],
    shape: tuple[int, int, int],
    affine: np.ndarray,
) -> tuple[LabelMap, list[Structure], list[str]]:
    """One label map (I, J, K) of ``shape`` from bool masks, each given inside its box
    (I, J, K slices of that grid): memory for the label map and the boxes, not a whole
    grid per ROI (80 MB each on a 512 x 512 x 300 CT). Empty masks are left out."""
    pairs = list(zip(boxed, structures, strict=True))
    notes = [f"{s.name}: empty, not propagated" for (_, m), s in pairs if not m.any()]
    kept = [(b, m, s) for (b, m), s in pairs if m.any()]
    if not kept:
        raise InputError("the planning contours hold no non-empty structure to propagate")
    dtype = np.uint8 if max(s.label for _, _, s in kept) < 256 else np.uint16
    labels = np.zeros(shape, dtype=dtype, order="F")
    for box, mask, structure in sorted(kept, key=lambda bms: -np.count_nonzero(bms[1])):
        region = labels[box]  # a view: painting it paints the label map
        # Painted before: a larger structure's voxel (every label value is above 0).
        overlap = int(np.count_nonzero(mask & (region != 0)))
        if overlap:
            notes.append(
                f"{structure.name} overlaps a larger structure in {overlap} voxels; "
                "the overlap is propagated as part of the smaller structure"
            )
        region[mask] = structure.label
    return LabelMap(labels, affine), [s for _, _, s in kept], notes


def _from_rtstruct(path: Path, series: DicomSeries | None):
    if series is None:
        raise InputError(
            f"{path.name}: an RTSTRUCT is drawn on a DICOM series; give the planning "
            "scan as that DICOM series, not as NIfTI"
        )
    rois = import_rtstruct(read_rtstruct(path), series)
    structures = [_structure(n, roi.name, roi.color, roi.interpreted_type) for n, roi in enumerate(rois, start=1)]
    boxed = [(r.box or (slice(None),) * 3, r.crop) for r in rois]
    labels, kept, notes = _paint(boxed, structures, series.volume.array.shape, series.volume.affine)
    return labels, kept, notes + [f"{r.name}: {n}" for r in rois for n in r.notes]


def _from_label_map(path: Path, index: Path):
    if not index.exists():
        raise InputError(
            f"{path.name}: a label map needs its structures.json (label and name of each structure) beside it"
        )
    labels = read_labels(path)
    try:
        listed = json.loads(index.read_text())
        structures = [_structure(int(s["label"]), str(s["name"]), s.get("color"), s.get("type", "")) for s in listed]
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"{index.name}: not a list of structures with label and name ({exc})") from exc
    boxed = [labels.mask_in_box(s.label) for s in structures]
    return _paint(boxed, structures, labels.array.shape, labels.affine)


def _from_mask_folder(folder: Path):
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p))
    if not files:
        raise InputError(f"{folder.name}: no labels.nii.gz and no NIfTI masks in the folder")
    names = {}
    index = ResultFolder(folder) / ResultFolder.STRUCTURES
    if index.exists():
        try:
            names = {e["file"]: e["name"] for e in json.loads(index.read_text()) if "file" in e}
        except (ValueError, TypeError, KeyError):
            names = {}
    boxed, structures, affine = [], [], None
    for n, path in enumerate(files, start=1):
        mask = read_labels(path)
        if affine is None:
            affine, shape = mask.affine, mask.array.shape
        elif mask.array.shape != shape or not np.allclose(mask.affine, affine, atol=1e-3):
            raise InputError(f"{path.name}: the masks are not all on one grid (shape or affine differs)")
        stem = path.name[: -len(".nii.gz")] if path.name.endswith(".gz") else path.stem
        boxed.append(_boxed(mask.array > 0))
        structures.append(_structure(n, names.get(path.name, stem), None))
    return _paint(boxed, structures, shape, cast(np.ndarray, affine))  # the folder holds a mask


def read_contours(path: str | Path, moving_series: DicomSeries | None) -> tuple[LabelMap, list[Structure], list[str]]:
    """Read the planning contours at ``path`` (see the module docstring).

    ``moving_series`` is the planning DICOM series (None for a NIfTI planning scan); an
    RTSTRUCT is rasterised onto it. Returns (label map on its own grid (I, J, K) with RAS
    affine in mm, the non-empty structures (``interpreted_type`` as the contours give it,
    empty when they give none), notes on what was left out or overlapped).

    Raises:
        InputError: a path that is none of these forms, an RTSTRUCT without a DICOM
            planning series, masks on different grids, or no non-empty structure.
        engine.io.rtstruct_import.RTStructImportError: an unreadable RTSTRUCT or one
            drawn on another Frame of Reference than the planning series.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path.name}: no such file or folder")
    try:
        if path.is_dir():
            folder = ResultFolder(path)
            if folder.has(folder.LABELS):
                return _from_label_map(folder / folder.LABELS, folder / folder.STRUCTURES)
            return _from_mask_folder(path)
        if is_nifti(path):
            return _from_label_map(path, ResultFolder(path.parent) / ResultFolder.STRUCTURES)
    except NiftiError as exc:
        raise InputError(str(exc)) from exc
    return _from_rtstruct(path, moving_series)
