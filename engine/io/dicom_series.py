"""Assemble a DICOM image series (folder or zip, any file names) into a ``Volume``.

Geometry follows DICOM PS3.3 C.7.6.2 (Image Plane Module): Image Orientation
(Patient) gives the row direction (increasing column index) then the column direction
(increasing row index) in LPS; Pixel Spacing is (between rows, between columns) in mm.
Slices are ordered by their Image Position (Patient) projected on the slice normal
(row x column), never by Instance Number or file name. Pixel values become HU (or the
modality's unit) with Rescale Slope/Intercept. The affine is converted from LPS to RAS
once, here: voxel (i, j, k) = (column, row, slice).
"""

from __future__ import annotations

import io
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from engine.volume import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
IMAGE_MODALITIES = {"CT", "MR", "PT"}
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


class DicomSeriesError(ValueError):
    """Files that cannot be assembled into one 3D volume; the message says why."""


@dataclass(frozen=True)
class SliceRef:
    """What an RTSTRUCT needs to reference one slice: its UIDs and its position.

    ``frame_number`` is the 1-based frame of a multi-frame (enhanced) image, None for a
    single-frame image (PS3.3 C.8.8.5.1.1: Referenced Frame Number).
    """

    sop_class_uid: str
    sop_instance_uid: str
    position_lps: tuple[float, float, float]
    frame_number: int | None = None


@dataclass(frozen=True)
class DicomSeries:
    """One image series: the volume plus what an RTSTRUCT must reference.

    ``slices[k]`` is the slice at voxel index K = k of ``volume``; ``header`` is the
    first slice's dataset without pixel data (Patient/Study attributes are copied from it).
    """

    volume: Volume
    slices: list[SliceRef]
    header: pydicom.Dataset
    notes: list[str] = field(default_factory=list)

    @property
    def study_instance_uid(self) -> str:
        return str(self.header.get("StudyInstanceUID", ""))

    @property
    def series_instance_uid(self) -> str:
        return str(self.header.get("SeriesInstanceUID", ""))

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.header.get("FrameOfReferenceUID", ""))

    @property
    def affine_lps(self) -> np.ndarray:
        return LPS_TO_RAS @ self.volume.affine


def _iter_sources(path: Path):
    """Yield (name, bytes-or-path) for every file in a folder (recursive) or a zip."""
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            yield str(f.relative_to(path)), f
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                name = info.filename
                if name.startswith("/") or ".." in Path(name).parts:
                    raise DicomSeriesError(f"zip entry {name!r} has an unsafe path")
                yield name, io.BytesIO(zf.read(info))
    else:
        yield path.name, path


def read_datasets(path: Path) -> tuple[list[pydicom.Dataset], list[str]]:
    """Every DICOM dataset in a folder, zip or single file, and notes on skipped files."""
    datasets, notes = [], []
    for name, source in _iter_sources(Path(path)):
        if Path(name).name.upper() == "DICOMDIR":
            notes.append(f"{name}: DICOMDIR ignored")
            continue
        try:
            ds = pydicom.dcmread(source)
        except (
            InvalidDicomError,
            EOFError,
            OSError,
            ValueError,
            KeyError,
            TypeError,
        ) as exc:
            notes.append(f"{name}: skipped, not a DICOM file ({type(exc).__name__})")
            continue
        ds.filename = name
        datasets.append(ds)
    return datasets, notes


def _image_series(datasets: list[pydicom.Dataset]) -> dict[str, list[pydicom.Dataset]]:
    groups: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for ds in datasets:
        if ds.get("Modality") in IMAGE_MODALITIES and "PixelData" in ds:
            groups[str(ds.get("SeriesInstanceUID", ""))].append(ds)
    return groups


def _geometry(
    ds: pydicom.Dataset, name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        spacing = np.array([float(v) for v in ds.PixelSpacing])
    except (AttributeError, TypeError, ValueError) as exc:
        raise DicomSeriesError(
            f"{name}: missing or invalid image geometry (orientation, position, pixel spacing)"
        ) from exc
    if (
        iop.shape != (6,)
        or ipp.shape != (3,)
        or spacing.shape != (2,)
        or np.any(spacing <= 0)
    ):
        raise DicomSeriesError(f"{name}: invalid image geometry attributes")
    row, col = iop[:3], iop[3:]
    if (
        abs(np.linalg.norm(row) - 1) > 1e-3
        or abs(np.linalg.norm(col) - 1) > 1e-3
        or abs(row @ col) > 1e-3
    ):
        raise DicomSeriesError(
            f"{name}: Image Orientation (Patient) is not two orthogonal unit vectors"
        )
    return row, col, ipp, spacing


def assemble_series(
    datasets: list[pydicom.Dataset], notes: list[str] | None = None
) -> DicomSeries:
    """Assemble the slices of one series into a ``DicomSeries``.

    Raises:
        DicomSeriesError: fewer than 2 slices, mixed orientation or size, duplicated
            positions, missing slices (gap > 1.5x the median spacing), gantry tilt
            (slice stack not along the normal) or unreadable pixel data.
    """
    notes = list(notes or [])
    if len(datasets) < 2:
        raise DicomSeriesError(
            f"a 3D volume needs at least 2 slices, the series has {len(datasets)}"
        )
    row, col, _, spacing = _geometry(datasets[0], datasets[0].filename)
    normal = np.cross(row, col)
    shape = (int(datasets[0].Rows), int(datasets[0].Columns))
    keyed = []
    for ds in datasets:
        r, c, ipp, sp = _geometry(ds, ds.filename)
        if not (np.allclose(r, row, atol=1e-4) and np.allclose(c, col, atol=1e-4)):
            raise DicomSeriesError(
                f"{ds.filename}: orientation differs from the rest of the series (localizer or mixed series?)"
            )
        if (int(ds.Rows), int(ds.Columns)) != shape or not np.allclose(
            sp, spacing, atol=1e-4
        ):
            raise DicomSeriesError(
                f"{ds.filename}: image size or pixel spacing differs from the rest of the series"
            )
        keyed.append((float(ipp @ normal), ipp, ds))
    keyed.sort(key=lambda t: t[0])
    positions = np.array([k[0] for k in keyed])
    steps = np.diff(positions)
    if np.any(steps < 1e-3):
        raise DicomSeriesError(
            "two slices share the same position: duplicated slices or two series mixed"
        )
    median = float(np.median(steps))
    if np.any(steps > 1.5 * median):
        worst = float(steps.max())
        raise DicomSeriesError(
            f"missing slices: a gap of {worst:.2f} mm between slices where the spacing is {median:.2f} mm"
        )
    first, last = keyed[0][1], keyed[-1][1]
    slice_vector = (last - first) / (len(keyed) - 1)
    in_plane_offset = slice_vector - (slice_vector @ normal) * normal
    if np.linalg.norm(in_plane_offset) > 1e-2 * np.linalg.norm(slice_vector) + 1e-3:
        raise DicomSeriesError(
            "gantry tilt: slices are not stacked along their normal; tilted series are not supported yet"
        )

    array = np.empty((shape[1], shape[0], len(keyed)), dtype=np.float32)
    for k, (_, _, ds) in enumerate(keyed):
        try:
            pixels = ds.pixel_array.astype(np.float32)
        except Exception as exc:  # pydicom raises many types for bad pixel data
            raise DicomSeriesError(
                f"{ds.filename}: pixel data cannot be decoded ({exc})"
            ) from exc
        if pixels.shape != shape:
            raise DicomSeriesError(
                f"{ds.filename}: pixel data shape {pixels.shape} differs from Rows x Columns {shape}"
            )
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        array[:, :, k] = (pixels * slope + intercept).T  # (row, col) -> (I=col, J=row)

    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row * spacing[1]
    affine_lps[:3, 1] = col * spacing[0]
    affine_lps[:3, 2] = slice_vector
    affine_lps[:3, 3] = first
    header = keyed[0][2].copy()
    if "PixelData" in header:
        del header.PixelData
    slices = [
        SliceRef(
            str(ds.SOPClassUID), str(ds.SOPInstanceUID), tuple(float(v) for v in ipp)
        )
        for _, ipp, ds in keyed
    ]
    meta = {
        "source": "dicom",
        "modality": str(header.get("Modality", "")),
        "notes": notes,
    }
    return DicomSeries(
        Volume(array, LPS_TO_RAS @ affine_lps, meta=meta), slices, header, notes
    )


def read_series(path: Path) -> DicomSeries:
    """Read the image series in a folder or zip (the largest, when several are present).

    Raises:
        DicomSeriesError: no DICOM image series found, or it cannot be assembled.
    """
    datasets, notes = read_datasets(Path(path))
    groups = _image_series(datasets)
    if not groups:
        raise DicomSeriesError(
            "no DICOM CT, MR or PET image series found in the upload"
            + (f" ({len(notes)} files skipped)" if notes else "")
        )
    _, members = max(groups.items(), key=lambda kv: len(kv[1]))
    if len(groups) > 1:
        notes.append(
            f"{len(groups)} image series found; using the largest ({len(members)} slices)"
        )
    return assemble_series(members, notes)
