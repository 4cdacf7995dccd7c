"""Group DICOM images into series and assemble one series into a ``Volume``.

Geometry follows DICOM PS3.3 C.7.6.2 (Image Plane Module) and, for multi-frame
(enhanced) images, C.7.6.16 (Multi-frame Functional Groups: Plane Position, Plane
Orientation, Pixel Measures, Pixel Value Transformation): Image Orientation (Patient)
gives the row direction (increasing column index) then the column direction (increasing
row index) in LPS; Pixel Spacing is (between rows, between columns) in mm.

* Grouping: by Series Instance UID; where that UID is empty (see
  ``../shared/data/totalseg_example``) by geometry (modality, Frame of Reference,
  orientation, image size, pixel spacing); where one UID holds several complete stacks
  of different geometry (a UID shared by two series), each stack is its own series.
* Order: slices by their Image Position (Patient) projected on the slice normal
  (row x column), never by Instance Number or file name.
* Values: Rescale Slope/Intercept per slice (per frame), so CT is in HU.
* Refusals (``DicomSeriesError``, before any pixel data is decoded): localizer (scout)
  images inside a series, mixed orientations, sizes or pixel spacings, duplicated
  positions, missing slices (a gap over 1.5x the median spacing), irregular spacing,
  gantry tilt (slices not stacked along their normal); an Image Pixel module (C.7.6.3)
  that cannot describe the pixel data (Rows, Columns, Bits Allocated, ... not whole
  numbers, not greyscale, or uncompressed pixel data shorter than they require); a grid
  beyond ``engine.volume.check_input_grid``'s limits; a damaged DICOM file in the upload.
* The affine is converted from LPS to RAS once, here: voxel (i, j, k) = (column, row,
  slice). Sagittal, coronal and oblique stacks are represented through the affine.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import dictionary_description
from pydicom.uid import ImplicitVRLittleEndian, UncompressedTransferSyntaxes

from engine.errors import InputError
from engine.io.dicom_files import (
    IMAGE_SOP_CLASSES,
    damaged_files_message,
    pixel_data_length,
    read_upload,
)
from engine.volume import GeometryError, Volume, check_input_grid

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"

_ORIENTATION_ATOL = 1e-3  # direction cosines; about 0.06 degrees
_SPACING_ATOL_MM = 1e-3
_GAP_FACTOR = 1.5  # a step over 1.5x the median is a missing slice (issue 3)
_IRREGULAR_FRACTION = 0.1  # a slice 10% of a spacing off the regular grid is refused
_INPLANE_FRACTION = 0.1  # in-plane drift over a tenth of a pixel is tilt or misalignment


class DicomSeriesError(InputError):
    """Files that cannot be assembled into one 3D volume; the message says why."""


@dataclass(frozen=True)
class SliceRef:
    """What an RTSTRUCT needs to reference one slice: its UIDs and its position.

    ``frame_number`` is the 1-based frame of a multi-frame (enhanced) image, None for a
    single-frame image (PS3.3 C.8.8.5.1.1: Referenced Frame Number).
    """

    sop_class_uid: str
    sop_instance_uid: str
    position_lps: tuple[float, ...]  # (x, y, z)
    frame_number: int | None = None


@dataclass(frozen=True)
class Frame:
    """One 2D image: a single-frame instance, or one frame of a multi-frame instance.

    ``orientation`` (6,) row then column direction cosines (LPS); ``position`` (3,) mm
    LPS of the centre of the first transmitted pixel; ``pixel_spacing`` (between rows,
    between columns) mm; ``index`` is the 0-based frame index, None for single-frame.
    """

    dataset: pydicom.Dataset
    index: int | None
    orientation: np.ndarray
    position: np.ndarray
    pixel_spacing: np.ndarray
    rows: int
    columns: int
    slope: float
    intercept: float
    localizer: bool

    @property
    def name(self) -> str:
        base = str(self.dataset.filename)
        return base if self.index is None else f"{base} (frame {self.index + 1})"

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.orientation[:3], self.orientation[3:])

    def same_plane_geometry(self, other: Frame) -> bool:
        return (
            self.dataset.get("Modality") == other.dataset.get("Modality")
            and str(self.dataset.get("FrameOfReferenceUID", "")) == str(other.dataset.get("FrameOfReferenceUID", ""))
            and (self.rows, self.columns) == (other.rows, other.columns)
            and np.allclose(self.orientation, other.orientation, atol=_ORIENTATION_ATOL)
            and np.allclose(self.pixel_spacing, other.pixel_spacing, atol=_SPACING_ATOL_MM)
        )


@dataclass
class SeriesCandidate:
    """The frames of one image series found in an upload, not yet assembled.

    ``key`` identifies the series within the upload: its Series Instance UID, or, where
    that UID is empty or shared by several stacks, the UID plus a geometry digest.
    ``rejected`` says why images of this Series Instance UID could not be placed (a
    series with such an image is refused: it may be missing a slice).
    """

    key: str
    series_instance_uid: str
    frames: list[Frame]
    rejected: list[str] = field(default_factory=list)  # its images that cannot be placed

    @property
    def header(self) -> pydicom.Dataset:
        return self.frames[0].dataset

    @property
    def modality(self) -> str:
        return str(self.header.get("Modality", ""))

    @property
    def description(self) -> str:
        return str(self.header.get("SeriesDescription", ""))

    @property
    def instances(self) -> int:
        return len({id(f.dataset) for f in self.frames})


@dataclass(frozen=True)
class StackGeometry:
    """Where the frames of a series sit: sorted frames and the LPS affine (4, 4), mm.

    ``steps_mm`` (N-1,) distances between consecutive slices along the normal;
    ``tilt_deg`` angle between the slice stacking direction and the slice normal.
    """

    frames: list[Frame]
    affine_lps: np.ndarray
    steps_mm: np.ndarray
    tilt_deg: float


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
    key: str = ""

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


# --- Frames ---------------------------------------------------------------------------


def _functional_item(ds: pydicom.Dataset, index: int, sequence: str) -> pydicom.Dataset | None:
    """The per-frame item of a functional group, else the shared one (PS3.3 C.7.6.16)."""
    for groups, i in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        items = ds.get(groups)
        found = items[i].get(sequence) if items and len(items) > i else None
        if found:
            return found[0]
    return None


def _whole(ds: pydicom.Dataset, keyword: str, name: str, default: int | None = None) -> int:
    """An integer attribute (Rows, Number of Frames, ...); absent or empty: ``default``.

    Raises:
        DicomSeriesError: absent without a default, or not one whole number (a value
            written with another VR, several values, text).
    """
    value = ds.get(keyword)
    what = dictionary_description(keyword)
    if value is None or value == "":
        if default is None:
            raise DicomSeriesError(f"{name}: no {what}")
        return default
    try:
        number = float(value) if isinstance(value, int | float | str) else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number != int(number):
        raise DicomSeriesError(f"{name}: {what} is not a whole number")
    return int(number)


def _decimal(ds: pydicom.Dataset, keyword: str, name: str, default: float) -> float:
    """A decimal attribute (Rescale Slope, ...); absent or empty: ``default``.

    Raises:
        DicomSeriesError: not one finite number.
    """
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        number = float(value) if isinstance(value, int | float | str) else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise DicomSeriesError(f"{name}: {dictionary_description(keyword)} is not a number")
    return number


def _floats(values, count: int, what: str, name: str) -> np.ndarray:
    try:
        array = np.array([float(v) for v in values], dtype=float)
    except (TypeError, ValueError) as exc:
        raise DicomSeriesError(f"{name}: {what} is not numeric") from exc
    if array.shape != (count,) or not np.all(np.isfinite(array)):
        raise DicomSeriesError(f"{name}: {what} must have {count} numeric values")
    return array


def _make_frame(
    ds: pydicom.Dataset,
    index: int | None,
    source: pydicom.Dataset,
    pos_source: pydicom.Dataset,
    measures: pydicom.Dataset,
    transform: pydicom.Dataset | None,
) -> Frame:
    name = str(ds.filename) if index is None else f"{ds.filename} (frame {index + 1})"
    for keyword, owner in (
        ("ImageOrientationPatient", source),
        ("ImagePositionPatient", pos_source),
        ("PixelSpacing", measures),
    ):
        if keyword not in owner:
            raise DicomSeriesError(f"{name}: no {keyword} (the image plane is unknown)")
    orientation = _floats(source.ImageOrientationPatient, 6, "Image Orientation (Patient)", name)
    row, col = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise DicomSeriesError(f"{name}: Image Orientation (Patient) is not two orthogonal unit vectors")
    spacing = _floats(measures.PixelSpacing, 2, "Pixel Spacing", name)
    if np.any(spacing <= 0):
        raise DicomSeriesError(f"{name}: Pixel Spacing must be positive, got {spacing.tolist()}")
    rows, columns = _whole(ds, "Rows", name, 0), _whole(ds, "Columns", name, 0)
    if rows < 1 or columns < 1:
        raise DicomSeriesError(f"{name}: Rows and Columns must be positive, got {rows} x {columns}")
    slope_owner = transform if transform is not None else ds
    slope = _decimal(slope_owner, "RescaleSlope", name, 1.0) or 1.0
    intercept = _decimal(slope_owner, "RescaleIntercept", name, 0.0)
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if index is not None:
        frame_type = _functional_item(ds, index, "CTImageFrameTypeSequence") or _functional_item(
            ds, index, "MRImageFrameTypeSequence"
        )
        if frame_type is not None:
            image_type += [str(v).upper() for v in (frame_type.get("FrameType") or [])]
    return Frame(
        dataset=ds,
        index=index,
        orientation=orientation,
        position=_floats(pos_source.ImagePositionPatient, 3, "Image Position (Patient)", name),
        pixel_spacing=spacing,
        rows=rows,
        columns=columns,
        slope=slope,
        intercept=intercept,
        localizer="LOCALIZER" in image_type,
    )


def frames_of(ds: pydicom.Dataset) -> list[Frame]:
    """The 2D frames of one image instance (one for single-frame, N for enhanced CT/MR).

    Raises:
        DicomSeriesError: the plane geometry or image size is missing or invalid.
    """
    frames = _whole(ds, "NumberOfFrames", str(ds.filename), 1)
    if frames < 1:
        raise DicomSeriesError(f"{ds.filename}: Number of Frames is {frames}; an image has at least one")
    if frames > 1:  # before looping over them: the count may be absurd
        problem = pixel_data_problem(ds)
        if problem:
            raise DicomSeriesError(problem)
    if "PerFrameFunctionalGroupsSequence" not in ds and "SharedFunctionalGroupsSequence" not in ds:
        if frames > 1:
            raise DicomSeriesError(
                f"{ds.filename}: a multi-frame image without per-frame positions cannot be placed in space"
            )
        return [_make_frame(ds, None, ds, ds, ds, None)]
    result = []
    for i in range(frames):
        orientation = _functional_item(ds, i, "PlaneOrientationSequence")
        position = _functional_item(ds, i, "PlanePositionSequence")
        measures = _functional_item(ds, i, "PixelMeasuresSequence")
        if orientation is None or position is None or measures is None:
            raise DicomSeriesError(f"{ds.filename} (frame {i + 1}): no plane position, orientation or pixel measures")
        transform = _functional_item(ds, i, "PixelValueTransformationSequence")
        result.append(_make_frame(ds, i, orientation, position, measures, transform))
    return result


# --- Grouping -------------------------------------------------------------------------


def _geometry_digest(frame: Frame) -> str:
    text = "|".join(
        [
            str(frame.dataset.get("Modality", "")),
            str(frame.dataset.get("FrameOfReferenceUID", "")),
            ",".join(f"{v:.3f}" for v in frame.orientation),
            f"{frame.rows}x{frame.columns}",
            ",".join(f"{v:.3f}" for v in frame.pixel_spacing),
        ]
    )
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _split_by_geometry(frames: list[Frame]) -> list[list[Frame]]:
    groups: list[list[Frame]] = []
    for frame in frames:
        for group in groups:
            if group[0].same_plane_geometry(frame):
                group.append(frame)
                break
        else:
            groups.append([frame])
    return groups


def group_series(
    images: list[pydicom.Dataset],
) -> tuple[list[SeriesCandidate], list[str]]:
    """Group image instances into series candidates; also returns notes on what was set aside.

    An image whose geometry or size cannot be read is set aside with the reason; when it
    is a CT, MR or PET image of a series that has others, that series' ``rejected``
    lists it (``plan_geometry`` then refuses the series). A series made only of
    localizer (scout) images is set aside with a note.
    """
    notes: list[str] = []
    by_uid: dict[str, list[Frame]] = defaultdict(list)
    rejected: dict[str, list[str]] = defaultdict(list)
    for ds in images:
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        try:
            frames = frames_of(ds)
        except DicomSeriesError as exc:
            notes.append(f"{exc}: image set aside")
            if uid and ds.get("SOPClassUID") in IMAGE_SOP_CLASSES:
                rejected[uid].append(str(exc))
            continue
        by_uid[uid].extend(frames)
    candidates = []
    for uid, frames in by_uid.items():
        parts = _split_by_geometry(frames)
        scouts = [p for p in parts if all(f.localizer for f in p)]
        stacks = [p for p in parts if not all(f.localizer for f in p)]
        if uid and scouts and not stacks:
            notes.append(f"series {uid}: localizer (scout) images only, not a volume; set aside")
            continue
        shared = uid and len(parts) > 1 and not scouts and all(len(p) >= 2 for p in parts)
        if uid and not shared:
            # One UID, one series: mixed geometry or a scout inside it is refused at assembly.
            candidates.append(SeriesCandidate(uid, uid, frames))
            continue
        for part in parts:
            if not uid and all(f.localizer for f in part):
                notes.append(f"{len(part)} localizer (scout) image(s) without Series Instance UID set aside")
                continue
            label = uid or "no-series-uid"
            candidates.append(SeriesCandidate(f"{label}#{_geometry_digest(part[0])}", uid, part))
    for candidate in candidates:
        candidate.rejected = rejected.get(candidate.series_instance_uid, [])
    candidates.sort(key=lambda c: (-len(c.frames), c.key))
    return candidates, notes


# --- Pixel data -----------------------------------------------------------------------

_BITS_ALLOCATED = (8, 16, 32)
_ITEM_HEADER_BYTES = 8  # PS3.5 A.4: each frame of encapsulated pixel data is at least one item


def pixel_data_problem(ds: pydicom.Dataset) -> str | None:
    """Why the Image Pixel module (PS3.3 C.7.6.3) of ``ds`` cannot describe its pixel
    data, or None. Reads the header only: Rows, Columns, Bits Allocated, Samples per
    Pixel, Pixel Representation, Photometric Interpretation, Number of Frames, and the
    length of uncompressed Pixel Data (which must hold Rows x Columns x frames x Bits
    Allocated / 8 bytes; encapsulated data at least one item per frame).
    """
    name = str(ds.filename)
    try:
        rows, columns = _whole(ds, "Rows", name), _whole(ds, "Columns", name)
        bits = _whole(ds, "BitsAllocated", name)
        samples = _whole(ds, "SamplesPerPixel", name, 1)
        representation = _whole(ds, "PixelRepresentation", name, 0)
        frames = _whole(ds, "NumberOfFrames", name, 1)
    except DicomSeriesError as exc:
        return str(exc)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if rows < 1 or columns < 1 or frames < 1:
        return f"{name}: Rows, Columns and Number of Frames must be positive, got {rows}, {columns} and {frames}"
    if bits not in _BITS_ALLOCATED:
        return f"{name}: Bits Allocated is {bits}; CT, MR and PET pixels use 8, 16 or 32"
    if samples != 1 or (photometric and not photometric.startswith("MONOCHROME")):
        return (
            f"{name}: a colour image ({samples} samples per pixel, {photometric or 'no'} "
            "photometric interpretation); CT, MR and PET images are greyscale"
        )
    if representation not in (0, 1):
        return f"{name}: Pixel Representation is {representation}; it must be 0 (unsigned) or 1 (signed)"
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    length = pixel_data_length(ds)
    if (syntax or ImplicitVRLittleEndian) in UncompressedTransferSyntaxes:
        needed = rows * columns * frames * samples * bits // 8
        if length < needed:
            return (
                f"{name}: the pixel data holds {length} bytes where Rows x Columns "
                f"({rows} x {columns}){f' x {frames} frames' if frames > 1 else ''} at "
                f"{bits} bits needs {needed}: the file is truncated or damaged"
            )
    elif length < frames * _ITEM_HEADER_BYTES:
        return (
            f"{name}: the compressed pixel data ({length} bytes) cannot hold "
            f"{frames} frames: the file is truncated or damaged"
        )
    return None


# --- Geometry and assembly ------------------------------------------------------------


def plan_geometry(candidate: SeriesCandidate) -> StackGeometry:
    """Order the frames of a series in space and check they form one regular volume.

    Raises:
        DicomSeriesError: an image of the series that could not be placed
            (``candidate.rejected``), fewer than 2 slices, pixel data the header cannot describe
            (``pixel_data_problem``), a localizer inside the series, mixed orientation,
            size or pixel spacing, duplicated positions, missing slices (gap > 1.5x the
            median spacing), irregular spacing, gantry tilt, or a grid beyond the limits
            of ``engine.volume.check_input_grid``.
    """
    frames = candidate.frames
    if candidate.rejected:
        more = len(candidate.rejected) - 1
        raise DicomSeriesError(
            f"{candidate.rejected[0]}{f' (and {more} more images)' if more else ''}; "
            "the series may be missing a slice, so it is not used"
        )
    if len(frames) < 2:
        raise DicomSeriesError(f"a 3D volume needs at least 2 slices, the series has {len(frames)}")
    for ds in {id(f.dataset): f.dataset for f in frames}.values():
        problem = pixel_data_problem(ds)
        if problem:
            raise DicomSeriesError(problem)
    scouts = [f for f in frames if f.localizer]
    if scouts:
        raise DicomSeriesError(
            f"{scouts[0].name}: a localizer (scout) image is inside the series "
            f"({len(scouts)} of {len(frames)} images); remove it and upload the axial series alone"
        )
    first = frames[0]
    for f in frames[1:]:
        if not np.allclose(f.orientation, first.orientation, atol=_ORIENTATION_ATOL):
            raise DicomSeriesError(f"{f.name}: orientation differs from the rest of the series (mixed orientations)")
        if (f.rows, f.columns) != (first.rows, first.columns):
            raise DicomSeriesError(
                f"{f.name}: image size {f.rows} x {f.columns} differs from the series' {first.rows} x {first.columns}"
            )
        if not np.allclose(f.pixel_spacing, first.pixel_spacing, atol=_SPACING_ATOL_MM):
            raise DicomSeriesError(f"{f.name}: pixel spacing differs from the rest of the series")
    normal = first.normal
    ordered = sorted(frames, key=lambda f: float(f.position @ normal))
    along = np.array([float(f.position @ normal) for f in ordered])
    steps = np.diff(along)
    if np.any(steps < 1e-3):
        k = int(np.argmin(steps))
        raise DicomSeriesError(
            f"{ordered[k].name} and {ordered[k + 1].name} share the same position: "
            "duplicated slices or two series mixed"
        )
    median = float(np.median(steps))
    if np.any(steps > _GAP_FACTOR * median):
        k = int(np.argmax(steps))
        raise DicomSeriesError(
            f"missing slices: a gap of {steps[k]:.2f} mm after {ordered[k].name} where the spacing is {median:.2f} mm"
        )
    count = len(ordered)
    slice_vector = (ordered[-1].position - ordered[0].position) / (count - 1)
    step_along = float(slice_vector @ normal)
    expected = along[0] + step_along * np.arange(count)
    deviation = np.abs(along - expected)
    if deviation.max() > _IRREGULAR_FRACTION * step_along:
        k = int(np.argmax(deviation))
        raise DicomSeriesError(
            f"irregular slice spacing: {ordered[k].name} is {deviation[k]:.2f} mm off a regular "
            f"{step_along:.2f} mm grid (spacing varies from {steps.min():.2f} to {steps.max():.2f} mm)"
        )
    offsets = np.array(
        [
            (f.position - ordered[0].position) - float((f.position - ordered[0].position) @ normal) * normal
            for f in ordered
        ]
    )
    drift = float(np.linalg.norm(offsets, axis=1).max())
    tilt = float(np.degrees(np.arctan2(np.linalg.norm(offsets[-1]), along[-1] - along[0])))
    if drift > _INPLANE_FRACTION * float(first.pixel_spacing.min()):
        raise DicomSeriesError(
            f"gantry tilt of {tilt:.1f} degrees (slices are shifted {drift:.2f} mm in-plane instead of "
            "being stacked along their normal); tilted series are refused: reconstruct without tilt or "
            "resample it before upload"
        )
    affine = np.eye(4)
    affine[:3, 0] = first.orientation[:3] * first.pixel_spacing[1]
    affine[:3, 1] = first.orientation[3:] * first.pixel_spacing[0]
    affine[:3, 2] = slice_vector
    affine[:3, 3] = ordered[0].position
    try:
        check_input_grid((first.columns, first.rows, count), affine)
    except GeometryError as exc:
        raise DicomSeriesError(str(exc)) from exc
    return StackGeometry(ordered, affine, steps, tilt)


def _pixels(frame: Frame, cache: dict[int, np.ndarray]) -> np.ndarray:
    ds = frame.dataset
    key = id(ds)
    if key not in cache:
        try:
            cache[key] = ds.pixel_array
        except Exception as exc:  # pydicom raises many types for bad or undecodable pixel data
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            what = f" ({syntax.name})" if syntax is not None else ""
            # The decoders' own messages name Python exceptions, not the problem.
            raise DicomSeriesError(
                f"{ds.filename}: pixel data cannot be decoded{what}: it is damaged or is not what the header declares"
            ) from exc
    decoded = cache[key]
    if frame.index is not None:
        if decoded.ndim != 3 or decoded.shape[0] <= frame.index:
            raise DicomSeriesError(
                f"{ds.filename}: {decoded.shape[0] if decoded.ndim == 3 else 1} frames of "
                f"pixel data where Number of Frames needs {frame.index + 1} or more"
            )
        decoded = decoded[frame.index]
    pixels = decoded
    if pixels.shape != (frame.rows, frame.columns):
        raise DicomSeriesError(
            f"{frame.name}: pixel data shape {pixels.shape} differs from Rows x Columns ({frame.rows}, {frame.columns})"
        )
    return pixels


def assemble_series(candidate: SeriesCandidate, notes: list[str] | None = None) -> DicomSeries:
    """Assemble one series candidate into a ``DicomSeries``; volume.array is float32
    (I, J, K), in Fortran order.

    Raises:
        DicomSeriesError: see ``plan_geometry``; also pixel data that cannot be decoded
            or whose size differs from Rows x Columns.
    """
    geometry = plan_geometry(candidate)
    ordered = geometry.frames
    first = ordered[0]
    # Fortran order (NIfTI's): each slice is contiguous, so filling it, writing the
    # NIfTI and cutting axial slices read memory in order.
    shape = (first.columns, first.rows, len(ordered))
    array = np.empty(shape, dtype=np.float32, order="F")
    cache: dict[int, np.ndarray] = {}
    for k, frame in enumerate(ordered):
        pixels = _pixels(frame, cache).astype(np.float32)
        array[:, :, k] = (pixels * frame.slope + frame.intercept).T  # (row, col) -> (I=col, J=row)
    header = first.dataset.copy()
    for bulky in ("PixelData", "PerFrameFunctionalGroupsSequence"):
        if bulky in header:
            delattr(header, bulky)
    slices = [
        SliceRef(
            str(f.dataset.get("SOPClassUID", "") or ""),  # may be empty (totalseg_example)
            str(f.dataset.get("SOPInstanceUID", "") or ""),
            tuple(float(v) for v in f.position),
            None if f.index is None else f.index + 1,
        )
        for f in ordered
    ]
    notes = list(notes or [])
    meta = {"source": "dicom", "modality": candidate.modality, "notes": notes}
    try:
        volume = Volume(array, LPS_TO_RAS @ geometry.affine_lps, meta=meta)
    except GeometryError as exc:
        raise DicomSeriesError(str(exc)) from exc
    return DicomSeries(volume, slices, header, notes, candidate.key)


def no_series_message(notes: list[str]) -> str:
    """Why an upload has no image series, with the first notes on what was set aside."""
    message = "no DICOM CT, MR or PET image series found in the upload"
    if not notes:
        return message
    shown = "; ".join(notes[:2])
    more = f"; and {len(notes) - 2} more files set aside" if len(notes) > 2 else ""
    return f"{message} ({shown}{more})"


def select_candidate(
    candidates: list[SeriesCandidate], key: str | None, notes: list[str] | None = None
) -> SeriesCandidate:
    """The series ``key`` names (its key, or its Series Instance UID when unambiguous);
    with no ``key``, the only series that can be assembled. ``notes`` (files skipped or
    set aside) explain an upload without series.

    Raises:
        DicomSeriesError: no image series, ``key`` not found, or several usable series
            and no key (the message lists them so the user can choose), or none usable
            (the message is the first refusal).
    """
    if not candidates:
        raise DicomSeriesError(no_series_message(notes or []))
    if key is not None:
        matches = [c for c in candidates if c.key == key] or [c for c in candidates if c.series_instance_uid == key]
        if len(matches) == 1:
            return matches[0]
        raise DicomSeriesError(f"the upload has no single image series {key!r}; it has: {describe(candidates)}")
    if len(candidates) == 1:
        return candidates[0]
    usable = [c for c in candidates if refusal(c) is None]
    if len(usable) == 1:
        return usable[0]
    if not usable:
        raise DicomSeriesError(f"none of the {len(candidates)} image series can be used: {refusal(candidates[0])}")
    raise DicomSeriesError(f"{len(usable)} image series in the upload; choose one: {describe(usable)}")


def refusal(candidate: SeriesCandidate) -> str | None:
    """Why ``candidate`` cannot be made one volume (geometry only), or None when it can."""
    try:
        plan_geometry(candidate)
    except DicomSeriesError as exc:
        return str(exc)
    return None


def describe(candidates: list[SeriesCandidate]) -> str:
    """One line per candidate for messages: key, modality, image count, description."""
    return "; ".join(
        f"{c.key} ({c.modality}, {len(c.frames)} images{', ' + c.description if c.description else ''})"
        for c in candidates
    )


def read_series(path: str | Path, key: str | None = None) -> DicomSeries:
    """Read one image series from a folder, zip or file; ``key`` picks it when there are several.

    Raises:
        DicomSeriesError: a damaged DICOM file in the upload, no image series, several
            and no ``key``, or the chosen series cannot be assembled (see
            ``assemble_series``).
        engine.io.dicom_files.DicomFilesError, zipfile.BadZipFile: unusable container.
    """
    upload = read_upload(Path(path))
    damaged = damaged_files_message(upload)
    if damaged:
        raise DicomSeriesError(damaged)
    candidates, notes = group_series(upload.images)
    notes = upload.skipped + notes
    candidate = select_candidate(candidates, key, notes)
    if len(candidates) > 1:
        notes.append(
            f"{len(candidates)} image series in the upload; using {candidate.key}"
            + (" (chosen)" if key is not None else " (the only one that forms a volume)")
        )
    return assemble_series(candidate, notes)
