"""Slices of a job's result for the viewer, in the display convention below.

``image.nii.gz`` is RAS+ with any voxel axis order, so volumes are first reoriented to
the closest canonical orientation (nibabel ``as_closest_canonical``: array axes point
to patient Right, Anterior, Superior; no resampling, only flips and axis swaps). Slices
are then shown in the radiological convention:

* axial: viewed from the feet; patient's right on the image left, anterior at the top;
* coronal: viewed from the front; patient's right on the image left, superior at the top;
* sagittal: viewed from the patient's left; anterior on the image left, superior at the top.

Rows run top to bottom and columns left to right; ``pixel_spacing_mm`` is (row, column)
spacing so the page can draw pixels with their physical aspect ratio.
"""

from __future__ import annotations

import base64
import json
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np

from webapp.delineation.engine_client import DelineationError, ResultFolder, write_atomically

PLANES = ("axial", "coronal", "sagittal")
_VIEWER_DIR = "viewer"


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    # Kept in the memory order it has (nibabel's is Fortran: axial slices contiguous); a
    # transposing copy into C order cost 0.8 s per 512 x 512 x 192 grid. Flips (negative
    # strides) are copied in the same order.
    fortran = abs(array.strides[0]) <= abs(array.strides[-1])
    contiguous = array.flags.f_contiguous if fortran else array.flags.c_contiguous
    if not contiguous:
        array = np.asfortranarray(array) if fortran else np.ascontiguousarray(array)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    write_atomically(path, write)


def _centres(labels: np.ndarray) -> dict[str, list[int]]:
    """Each structure's centre voxel {label: [x, y, z]} in a label map (X, Y, Z): one
    pass over the grid for the labelled voxels (np.unique sorted all 50 million of a
    512 x 512 x 192 grid), then sums over those only."""
    order = "F" if abs(labels.strides[0]) <= abs(labels.strides[-1]) else "C"
    flat = labels.ravel(order=order)  # a view when the grid is contiguous in that order
    where = np.flatnonzero(flat)
    values = flat[where]
    coords = np.unravel_index(where, labels.shape, order=order)
    counts = np.bincount(values)
    sums = [np.bincount(values, weights=c, minlength=len(counts)) for c in coords]
    return {str(v): [int(round(s[v] / counts[v])) for s in sums] for v in range(1, len(counts)) if counts[v]}


def prepare_viewer(result_dir: Path) -> dict:
    """Write canonical (RAS) copies of image and labels as .npy for fast slicing, and of
    ``direct_labels.nii.gz`` where a propagation has one (the model's own segmentation).

    Returns the viewer metadata (shape, spacing, per-structure centre slices, ``direct``),
    also written to ``viewer/meta.json``. Safe to run twice (atomic writes).
    """
    folder = ResultFolder(result_dir)
    out = folder / _VIEWER_DIR
    out.mkdir(exist_ok=True)
    image = nib.as_closest_canonical(nib.load(folder / folder.IMAGE))
    labels = nib.as_closest_canonical(nib.load(folder / folder.LABELS))
    if image.shape[:3] != labels.shape[:3] or not np.allclose(image.affine, labels.affine, atol=1e-3):
        raise DelineationError("The label map does not match the image grid.")
    image_array = np.asarray(image.dataobj).astype(np.int16, copy=False)  # written as int16 HU
    label_array = np.asarray(labels.dataobj).astype(np.uint8)
    direct_array = None
    if folder.has(folder.DIRECT_LABELS):
        direct = nib.as_closest_canonical(nib.load(folder / folder.DIRECT_LABELS))
        if direct.shape[:3] != labels.shape[:3] or not np.allclose(direct.affine, labels.affine, atol=1e-3):
            raise DelineationError("The direct segmentation does not match the image grid.")
        direct_array = np.asarray(direct.dataobj).astype(np.uint8)
    centres = _centres(label_array)
    spacing = [float(s) for s in image.header.get_zooms()[:3]]
    meta = {
        "shape": [int(n) for n in image.shape[:3]],
        "spacing_mm": spacing,
        "affine": np.asarray(image.affine).round(6).tolist(),
        "centres": centres,
        "convention": "RAS canonical; axial/coronal: patient right on image left; sagittal: anterior on image left",
        "direct": direct_array is not None,
    }
    _atomic_save_npy(out / "image.npy", image_array)
    _atomic_save_npy(out / "labels.npy", label_array)
    if direct_array is not None:
        _atomic_save_npy(out / "direct.npy", direct_array)
    text = json.dumps(meta)
    write_atomically(out / "meta.json", lambda tmp: Path(tmp).write_text(text))
    return meta


@lru_cache(maxsize=8)
def _load_viewer(result_dir: str, mtime_ns: int) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray | None]:
    base = Path(result_dir) / _VIEWER_DIR
    meta = json.loads((base / "meta.json").read_text())
    direct = np.load(base / "direct.npy", mmap_mode="r") if meta.get("direct") else None
    return meta, np.load(base / "image.npy", mmap_mode="r"), np.load(base / "labels.npy", mmap_mode="r"), direct


def viewer_volume(result_dir: Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray | None]:
    """(meta, image, labels, direct labels or None) in canonical RAS, memory-mapped;
    prepared on first use."""
    meta_path = Path(result_dir) / _VIEWER_DIR / "meta.json"
    if not meta_path.exists():
        prepare_viewer(Path(result_dir))
    return _load_viewer(str(result_dir), meta_path.stat().st_mtime_ns)


def plane_count(meta: dict, plane: str) -> int:
    nx, ny, nz = meta["shape"]
    return {"axial": nz, "coronal": ny, "sagittal": nx}[plane]


def oriented_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """The displayed 2D slice (rows top to bottom, columns left to right) of a canonical
    (X, Y, Z) volume; see module doc. A view: writing to it writes ``volume``."""
    if plane == "axial":  # rows A->P, columns R->L
        return volume[::-1, ::-1, index].T
    if plane == "coronal":  # rows S->I, columns R->L
        return volume[::-1, index, ::-1].T
    return volume[index, ::-1, ::-1].T  # sagittal: rows S->I, columns A->P


_ORIENTATION_LABELS = {
    "axial": {"top": "A", "bottom": "P", "left": "R", "right": "L"},
    "coronal": {"top": "S", "bottom": "I", "left": "R", "right": "L"},
    "sagittal": {"top": "S", "bottom": "I", "left": "A", "right": "P"},
}


def _encode(array: np.ndarray, dtype: str) -> dict:
    data = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<"))
    return {
        "dtype": dtype,
        "byte_order": "little",
        "encoding": "base64",
        "data": base64.b64encode(data.tobytes()).decode(),
    }


def slice_of(result_dir: Path, plane: str, index: int | None, labels: np.ndarray | None = None) -> dict:
    """One displayed slice of the CT (int16 HU) and the label map (uint8), and for a
    propagation with a direct segmentation ``direct_labels`` (uint8, same label values)
    with ``direct_present``; see module doc. ``labels``: a revision's label map (canonical
    X, Y, Z) instead of the model's.

    ``index`` counts along the canonical axis of the plane's normal: axial 0 = most
    inferior, coronal 0 = most posterior, sagittal 0 = patient's leftmost. None gives
    the slice through the centre of all structures (or the middle slice).

    Raises:
        ValueError: unknown plane or index out of range (message for the user).
    """
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {', '.join(PLANES)}")
    meta, image, model_labels, direct = viewer_volume(result_dir)
    labels = model_labels if labels is None else labels
    count = plane_count(meta, plane)
    axis = {"sagittal": 0, "coronal": 1, "axial": 2}[plane]
    if index is None:
        centres = list(meta["centres"].values())
        index = int(round(np.mean([c[axis] for c in centres]))) if centres else count // 2
    if not 0 <= index < count:
        raise ValueError(f"index must be between 0 and {count - 1} for the {plane} plane")
    sx, sy, sz = meta["spacing_mm"]
    row_col = {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[plane]
    ct = oriented_slice(image, plane, index)
    lab = oriented_slice(labels, plane, index)
    voxel = [0, 0, 0]
    voxel[axis] = index
    position = (np.asarray(meta["affine"]) @ np.array([*voxel, 1.0]))[axis]
    result = {
        "plane": plane,
        "index": index,
        "count": count,
        "rows": int(ct.shape[0]),
        "columns": int(ct.shape[1]),
        "pixel_spacing_mm": [float(row_col[0]), float(row_col[1])],
        "slice_spacing_mm": float(meta["spacing_mm"][axis]),
        "position_mm": round(float(position), 3),
        "volume_shape": meta["shape"],
        "orientation": _ORIENTATION_LABELS[plane],
        "labels_present": sorted(int(v) for v in np.unique(lab) if v),
        # Voxel index (canonical sagittal, coronal, axial) of each structure's centre.
        "centres": meta["centres"],
        "image": _encode(ct, "int16"),
        "labels": _encode(lab, "uint8"),
    }
    if direct is not None:  # a propagation's direct segmentation of the daily scan, same label values
        direct_slice = oriented_slice(direct, plane, index)
        result["direct_labels"] = _encode(direct_slice, "uint8")
        result["direct_present"] = sorted(int(v) for v in np.unique(direct_slice) if v)
    return result
