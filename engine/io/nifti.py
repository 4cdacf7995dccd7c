"""NIfTI read/write (nibabel). Arrays are (I, J, K) voxel axes, affines RAS+ in mm."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from engine.io.atomic import write_atomically
from engine.volume import GeometryError, LabelMap, Volume


class NiftiError(ValueError):
    """A file that is not a readable 3D NIfTI image."""


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        img = nib.load(str(path))
        array = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise NiftiError(
            f"{Path(path).name}: not a readable NIfTI file ({exc})"
        ) from exc
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise NiftiError(
            f"{Path(path).name}: expected a 3D image, got shape {array.shape}"
        )
    affine = img.affine if img.affine is not None else np.eye(4)
    return array, np.asarray(affine, dtype=np.float64)


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a 3D NIfTI image as a ``Volume`` (float32 array (I, J, K), RAS affine in mm).

    Raises:
        NiftiError: unreadable file, not 3D, NaN/infinite voxels or a degenerate affine.
    """
    array, affine = _load(Path(path))
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise NiftiError(f"{Path(path).name}: image contains NaN or infinite values")
    try:
        return Volume(array, affine, meta={"source": "nifti"})
    except GeometryError as exc:
        raise NiftiError(f"{Path(path).name}: {exc}") from exc


def read_labels(path: str | os.PathLike) -> LabelMap:
    """Read a 3D NIfTI label map as a ``LabelMap`` (uint8/int array (I, J, K)).

    Raises:
        NiftiError: unreadable, not 3D, or holding non-integer values.
    """
    array, affine = _load(Path(path))
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise NiftiError(f"{Path(path).name}: label map holds non-integer values")
        array = rounded
    array = array.astype(
        np.uint8
        if array.max(initial=0) < 256 and array.min(initial=0) >= 0
        else np.int32
    )
    try:
        return LabelMap(array, affine)
    except GeometryError as exc:
        raise NiftiError(f"{Path(path).name}: {exc}") from exc


def write_nifti(image: Volume | LabelMap, path: str | os.PathLike) -> Path:
    """Write a volume or label map as NIfTI (atomically: temporary name, then rename)."""
    nii = nib.Nifti1Image(image.array, image.affine)
    nii.set_qform(image.affine, code=1)
    nii.set_sform(image.affine, code=1)
    return write_atomically(path, lambda tmp: nib.save(nii, tmp))


def write_displacement_field(
    ddf_mm: np.ndarray, affine: np.ndarray, path: str | os.PathLike
) -> Path:
    """Write a displacement field (I, J, K, 3) float32, mm along R, A, S, on the grid of
    ``affine``, as NIfTI with intent ``vector`` (atomically).

    Raises:
        GeometryError: ``ddf_mm`` is not (I, J, K, 3).
    """
    ddf_mm = np.asarray(ddf_mm, dtype=np.float32)
    if ddf_mm.ndim != 4 or ddf_mm.shape[3] != 3:
        raise GeometryError(f"expected a field (I, J, K, 3), got shape {ddf_mm.shape}")
    nii = nib.Nifti1Image(ddf_mm, affine)
    nii.header.set_intent("vector")
    nii.header.set_xyzt_units("mm")
    nii.set_qform(affine, code=1)
    nii.set_sform(affine, code=1)
    return write_atomically(path, lambda tmp: nib.save(nii, tmp))


def read_displacement_field(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a displacement field written by ``write_displacement_field`` (or the 5D
    (I, J, K, 1, 3) layout of the NIfTI standard) -> (float32 (I, J, K, 3), affine).

    Raises:
        NiftiError: unreadable, or not a field of three components per voxel.
    """
    try:
        img = nib.load(str(path))
        array = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise NiftiError(
            f"{Path(path).name}: not a readable NIfTI file ({exc})"
        ) from exc
    if array.ndim == 5 and array.shape[3] == 1:
        array = array[:, :, :, 0, :]
    if array.ndim != 4 or array.shape[3] != 3:
        raise NiftiError(
            f"{Path(path).name}: expected a displacement field (I, J, K, 3), got {array.shape}"
        )
    return array, np.asarray(img.affine, dtype=np.float64)
