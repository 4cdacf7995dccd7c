"""Domain types: an intensity volume and a label map, each carrying its affine.

Axis order of ``array`` is always (I, J, K) = NIfTI voxel axes; for a DICOM series
I runs along the columns, J along the rows and K along the slice normal.
``affine`` maps voxel indices to RAS+ patient coordinates in mm (NIfTI convention;
DICOM LPS is converted once, in ``engine.io``).

Keeping ``Volume`` and ``LabelMap`` distinct means a label map is always resampled
with nearest neighbour (or as one-hot probabilities), never linearly as integers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy import ndimage

from engine.errors import InputError


class GeometryError(InputError):
    """An array or affine that cannot describe a 3D image in patient space."""


def _check_geometry(array: np.ndarray, affine: np.ndarray) -> None:
    if array.ndim != 3:
        raise GeometryError(f"expected a 3D array (I, J, K), got shape {array.shape}")
    if min(array.shape) < 1:
        raise GeometryError(f"empty image of shape {array.shape}")
    if affine.shape != (4, 4):
        raise GeometryError(f"expected a 4x4 affine, got shape {affine.shape}")
    if not np.all(np.isfinite(affine)):
        raise GeometryError("affine contains NaN or infinite values")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise GeometryError("affine is not invertible (zero spacing or degenerate axes)")


# Limits on an input image (a scan read from a file), checked by the readers before the
# voxels are allocated: beyond them the header is damaged or crafted, not a patient.
MAX_VOXELS = 1 << 30  # 4 GiB as float32; a 512 x 512 x 4096 CT
MAX_EXTENT_MM = 5000.0  # along any voxel axis: no patient is 5 m long
MIN_SPACING_MM = 1e-3


def check_input_grid(shape: tuple[int, ...], affine: np.ndarray) -> None:
    """Check the grid of an input image before its voxels are read.

    ``shape`` is (I, J, K) in voxels, ``affine`` the (4, 4) voxel to patient matrix in mm
    (RAS or LPS: only the column lengths are used).

    Raises:
        GeometryError: more than ``MAX_VOXELS`` voxels, a voxel spacing (column length of
            the affine) under ``MIN_SPACING_MM`` or not finite, or an extent (spacing x
            size) over ``MAX_EXTENT_MM`` along an axis.
    """
    voxels = int(np.prod([int(n) for n in shape], dtype=object))
    if voxels > MAX_VOXELS:
        size = " x ".join(str(int(n)) for n in shape)
        raise GeometryError(
            f"the image would have {size} = {voxels:,} voxels, over the limit of "
            f"{MAX_VOXELS:,}: its header is damaged, or it is far larger than a scan"
        )
    spacing = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    if not np.all(np.isfinite(spacing)) or np.any(spacing < MIN_SPACING_MM):
        raise GeometryError(
            f"voxel spacing {_mm(spacing)} mm: a spacing that is zero, not a number or "
            f"under {MIN_SPACING_MM} mm makes the affine not invertible (the image's "
            "geometry is damaged)"
        )
    extent = spacing * np.asarray(shape[:3], dtype=float)
    if np.any(extent > MAX_EXTENT_MM):
        raise GeometryError(
            f"the image would measure {_mm(extent)} mm (voxel spacing {_mm(spacing)} mm), "
            f"over {MAX_EXTENT_MM / 1000:.0f} m along an axis: its geometry is damaged"
        )


def hu_as_int16(hu: np.ndarray) -> np.ndarray:
    """(I, J, K) intensities rounded and clipped to int16 (HU for CT, as the outputs and
    DICOM export store them), in Fortran order (NIfTI's), converted one slice at a time so
    that no float copy of the whole volume is made."""
    out = np.empty(hu.shape, dtype=np.int16, order="F")
    for k in range(hu.shape[2]):
        out[:, :, k] = np.clip(np.rint(hu[:, :, k]), -32768, 32767)
    return out


def _mm(values: np.ndarray) -> str:
    return " x ".join(f"{v:.4g}" for v in values)


@dataclass(frozen=True)
class Volume:
    """An intensity image (HU for CT) of shape (I, J, K) with its RAS affine (mm)."""

    array: np.ndarray
    affine: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_geometry(self.array, np.asarray(self.affine))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing in mm along I, J, K."""
        x, y, z = (float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))
        return (x, y, z)


@dataclass(frozen=True)
class LabelMap:
    """An integer label map of shape (I, J, K) (0 = background) with its RAS affine (mm)."""

    array: np.ndarray
    affine: np.ndarray

    def __post_init__(self) -> None:
        _check_geometry(self.array, np.asarray(self.affine))
        if not np.issubdtype(self.array.dtype, np.integer):
            raise GeometryError(f"label map must hold integers, got {self.array.dtype}")

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing in mm along I, J, K."""
        x, y, z = (float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))
        return (x, y, z)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    @cached_property
    def boxes(self) -> dict[int, tuple[slice, slice, slice]]:
        """Bounding box (I, J, K slices) of each label value present (0 excluded), from
        one pass over the array, computed once (the array is not changed afterwards);
        exports crop each structure to its box with it."""
        # find_objects walks the array in C order: a Fortran-order array (as the exports
        # make it) goes in as its C-contiguous transpose, five times faster on 512^2 grids.
        transposed = self.array.flags.f_contiguous and not self.array.flags.c_contiguous
        found = ndimage.find_objects(self.array.T if transposed else self.array)
        return {value: (box[::-1] if transposed else box) for value, box in enumerate(found, start=1) if box}

    def mask_in_box(self, value: int) -> tuple[tuple[slice, slice, slice], np.ndarray]:
        """(box, bool mask of ``value`` inside it); an empty box and mask when absent."""
        box = self.boxes.get(value, (slice(0, 0),) * 3)
        return box, self.array[box] == value
