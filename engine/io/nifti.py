"""NIfTI read/write (nibabel). Arrays are (I, J, K) voxel axes, affines RAS+ in mm."""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, cast

import nibabel as nib
import numpy as np
from isal import igzip_threaded
from nibabel.spatialimages import HeaderDataError

from engine.errors import InputError
from engine.io.atomic import write_atomically
from engine.volume import GeometryError, LabelMap, Volume, check_input_grid


class NiftiError(InputError):
    """A file that is not a readable 3D NIfTI image."""


def _gzip_problem(path: Path) -> str | None:
    """What is wrong with a ``.gz`` file's compression, None when its stream is whole.
    Read in chunks and dropped, so a large stream costs time, not memory."""
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            return "it is named .gz but is not gzip-compressed"
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    except EOFError:
        return "its gzip stream ends early: the file is truncated"
    except (OSError, zlib.error):  # BadGzipFile (CRC, garbage) is an OSError
        return "its gzip compression is damaged"
    return None


def why_unreadable(exc: BaseException, path: Path) -> str:
    """Why nibabel could not read ``path``, in words, from the exception it raised (and,
    for a ``.gz`` file, its gzip stream); never an OS error's text, which holds the path."""
    if str(path).lower().endswith(".gz"):
        problem = _gzip_problem(path)
        if problem:
            return problem
    text = str(exc)
    if isinstance(exc, EOFError) or "ended before" in text or "Expected" in text:
        return "it ends early: truncated or damaged"
    if isinstance(exc, HeaderDataError):
        return f"its header is not valid: {text}"
    return "its header is not a valid NIfTI-1 or NIfTI-2 header"


def _zero_pixdim(img: nib.Nifti1Image, path: Path) -> bool:
    """A zero or non-finite voxel size where the affine comes from pixdim (qform and sform
    codes 0). nibabel replaces such a size by 1 mm when it loads the header, so the
    header is read again without its fixes."""
    if img.header["qform_code"] or img.header["sform_code"]:
        return False
    with nib.openers.ImageOpener(str(path)) as f:
        raw = type(img.header).from_fileobj(f, check=False)
    pixdim = np.asarray(raw["pixdim"][1:4], dtype=float)
    return bool(np.any(pixdim == 0) or not np.all(np.isfinite(pixdim)))


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The voxels and affine of a 3D NIfTI file; the header is checked before the voxels
    are read (shape, data type, ``check_input_grid``)."""
    name = Path(path).name
    try:
        img = cast(nib.Nifti1Image, nib.load(str(path)))
        shape = tuple(int(n) for n in img.shape)
        dtype = img.get_data_dtype()
        affine = np.asarray(img.affine if img.affine is not None else np.eye(4), dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise NiftiError(f"{name}: not a readable NIfTI file ({why_unreadable(exc, Path(path))})") from exc
    if _zero_pixdim(img, path):
        raise NiftiError(
            f"{name}: a voxel size (pixdim) is zero or not a number and no qform or "
            "sform gives the geometry: the voxel spacing is unknown"
        )
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise NiftiError(f"{name}: expected a 3D image, got shape {shape}")
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise NiftiError(f"{name}: voxel data type {dtype} (colour or complex values) is not an intensity image")
    try:
        check_input_grid(shape, affine)
    except GeometryError as exc:
        raise NiftiError(f"{name}: {exc}") from exc
    try:
        array = np.asanyarray(img.dataobj).reshape(shape)
    except Exception as exc:  # truncated data, damaged gzip stream
        raise NiftiError(f"{name}: not a readable NIfTI file ({why_unreadable(exc, Path(path))})") from exc
    return array, affine


def read_volume(path: str | os.PathLike) -> Volume:
    """Read a 3D NIfTI image as a ``Volume`` (float32 array (I, J, K), RAS affine in mm).

    Raises:
        NiftiError: unreadable or truncated file, not 3D, not an intensity data type,
            NaN/infinite voxels, a degenerate affine, or a grid beyond the limits of
            ``engine.volume.check_input_grid``.
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
    array = array.astype(np.uint8 if array.max(initial=0) < 256 and array.min(initial=0) >= 0 else np.int32)
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


class VectorField(Protocol):
    """A displacement field written without holding it whole (``engine.infer.displacement.
    FieldOnFixed``): ``shape`` (I, J, K, 3); ``slabs()`` yields its three components along
    R, A, S (mm) as (3, I, J, n) float32 slabs that together run over K in order."""

    shape: tuple[int, ...]

    def slabs(self) -> Iterable[np.ndarray]: ...


# The field's file is by far the largest output of a propagation (600 MB of float32 at
# 512 x 512 x 192 before compression). ISA-L's deflate at level 3 compresses it to about
# the size zlib's level 1 reaches (0.69 against 0.66 of the raw size) in a sixth of the
# time, in two threads (docs/benchmarks.md, "Seventh pass").
_FIELD_COMPRESSLEVEL = 3
_FIELD_THREADS = 2
_COPY_BYTES = 1 << 20  # the threaded writer's block


def write_displacement_field(field: VectorField, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a displacement field (I, J, K, 3) float32, mm along R, A, S, on the grid of
    ``affine``, as NIfTI-1 with intent ``vector`` (atomically), gzip-compressed when
    ``path`` ends in ``.gz``.

    The file holds the voxels in Fortran order, i fastest and the component slowest, but
    the field is computed slab by slab along K with its three components together (one
    interpolation per voxel): the R component goes to the file as it comes, the A and S
    components to two unnamed temporary files beside ``path`` (on disk, not in memory;
    gone when closed), copied in after it. No more than one slab is in memory.

    Raises:
        GeometryError: ``field.shape`` is not (I, J, K, 3), or its slabs do not cover K.
    """
    shape = tuple(int(n) for n in field.shape)
    if len(shape) != 4 or shape[3] != 3:
        raise GeometryError(f"expected a field (I, J, K, 3), got shape {shape}")
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    header.set_intent("vector")
    header.set_xyzt_units("mm")
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    folder = Path(path).parent

    def write(tmp: str) -> None:
        compressed = str(path).endswith(".gz")
        opened = (
            igzip_threaded.open(tmp, "wb", compresslevel=_FIELD_COMPRESSLEVEL, threads=_FIELD_THREADS)
            if compressed
            else open(tmp, "wb")
        )
        with opened as f, tempfile.TemporaryFile(dir=folder) as a, tempfile.TemporaryFile(dir=folder) as s:
            header.write_to(f)  # 348 bytes and the 4-byte empty extension: vox_offset 352
            planes = 0
            for values in field.slabs():
                if values.shape[:3] != (3, *shape[:2]):
                    raise GeometryError(f"a slab of shape {values.shape} in a field of shape {shape}")
                for out, component in zip((f, a, s), values, strict=True):
                    out.write(np.asarray(component, dtype=np.float32).tobytes(order="F"))
                planes += values.shape[3]
            if planes != shape[2]:
                raise GeometryError(f"the field's slabs cover {planes} of its {shape[2]} slices")
            for spilled in (a, s):
                spilled.seek(0)
                shutil.copyfileobj(spilled, f, _COPY_BYTES)

    return write_atomically(path, write)


def read_displacement_field(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a displacement field written by ``write_displacement_field`` (or the 5D
    (I, J, K, 1, 3) layout of the NIfTI standard) -> (float32 (I, J, K, 3), affine).

    Raises:
        NiftiError: unreadable, or not a field of three components per voxel.
    """
    try:
        img = cast(nib.Nifti1Image, nib.load(str(path)))
        array = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise NiftiError(f"{Path(path).name}: not a readable NIfTI file ({exc})") from exc
    if array.ndim == 5 and array.shape[3] == 1:
        array = array[:, :, :, 0, :]
    if array.ndim != 4 or array.shape[3] != 3:
        raise NiftiError(f"{Path(path).name}: expected a displacement field (I, J, K, 3), got {array.shape}")
    return array, np.asarray(img.affine, dtype=np.float64)
