"""Read a DICOM RT Structure Set (RTSTRUCT) and rasterise its ROIs onto an image series.

Follows DICOM PS3.3 A.19 (RT Structure Set IOD) and C.8.8.6 (ROI Contour module):
each ROI's CLOSED_PLANAR contours are polygons in patient coordinates (LPS, mm). A
contour is placed on a slice of the reference series, then filled with the even-odd
rule at pixel centres: a voxel is inside when its centre lies inside an odd number of
that ROI's polygons on its slice, so a hole (a contour inside an island) and several
islands per slice come out right, as planning systems draw them.

Slice matching: by the contour's Referenced SOP Instance UID (Contour Image Sequence,
with Referenced Frame Number for multi-frame images) when that UID is in the series;
otherwise (a dangling or absent reference) by position, to the slice whose plane is
nearest the contour's plane, within half a slice spacing.

Errors and notes. File-level problems raise :class:`RTStructImportError` (not an
RTSTRUCT, another Frame of Reference than the series, malformed Contour Data, an ROI
Contour that names no ROI): the result would be wrong as a whole. Contour-level problems
are notes on the ROI, never silent: the contour is skipped when it cannot be placed
(outside the series' slice range, not parallel to the slices, fewer than 3 points, or
not CLOSED_PLANAR, e.g. POINT markers) and placed on the nearest slice with a note when
it lies between slice planes (more than ``PLANE_TOLERANCE_MM`` off, less than half a
slice spacing) or extends beyond the image in-plane (clipped).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from engine.errors import InputError
from engine.io.dicom_series import RTSTRUCT_SOP_CLASS, DicomSeries

CONTOUR_DATA = Tag(0x3006, 0x0050)
# Exporters round Contour Data to 0.01-0.1 mm; a contour this close to a slice plane lies on it.
PLANE_TOLERANCE_MM = 0.1


class RTStructImportError(InputError):
    """An RTSTRUCT that cannot be imported onto the series; the message says why."""


@dataclass(frozen=True)
class ImportedROI:
    """One ROI of a structure set, rasterised on the reference series' grid.

    ``mask`` is bool (I, J, K) = (column, row, slice) on the series' voxel grid (the
    grid of ``series.volume``, RAS affine ``series.volume.affine``), made on each read
    from ``crop``: the mask inside ``box`` (I, J, K slices of that grid; None: ``crop``
    is the whole grid), which is all the importer keeps, as a 512 x 512 grid makes a
    whole mask 50 MB or more per ROI. ``contours`` counts the contours filled into it;
    ``notes`` say what was matched by position, skipped or clipped. ``color`` is ROI
    Display Color (r, g, b), None when absent; ``interpreted_type`` is RT ROI
    Interpreted Type, "" when absent.
    """

    roi_number: int
    name: str
    interpreted_type: str
    color: tuple[int, int, int] | None
    crop: np.ndarray
    contours: int
    notes: list[str] = field(default_factory=list)
    box: tuple[slice, slice, slice] | None = None
    grid_shape: tuple[int, int, int] | None = None

    @property
    def mask(self) -> np.ndarray:
        """The ROI on the whole grid (I, J, K), a new array on each read."""
        if self.box is None:
            return self.crop
        mask = np.zeros(cast(tuple[int, int, int], self.grid_shape), dtype=bool)
        mask[self.box] = self.crop
        return mask

    def volume_cm3(self, voxel_volume_mm3: float) -> float:
        return float(self.crop.sum()) * voxel_volume_mm3 / 1000.0


def read_rtstruct(path: str | os.PathLike) -> Dataset:
    """Read an RTSTRUCT file.

    Raises:
        RTStructImportError: not a readable DICOM file, a value that cannot be decoded,
            or not an RT Structure Set.
    """
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many types (struct.error, ...) on damage
        raise RTStructImportError(
            f"{Path(path).name}: not a readable DICOM file (missing, truncated or damaged)"
        ) from exc
    _decode_all(ds)
    _check_is_rtstruct(ds)
    return ds


def _decode_all(ds: Dataset) -> None:
    """Decode every attribute now, nested ones too: pydicom decodes a value when it is
    first read, and a damaged one would otherwise fail wherever that happens. Contour
    Data is left encoded: ``_contour_points`` parses it, and says which contour is bad."""
    try:
        _decode(ds)
    except Exception as exc:  # pydicom raises many types for a value it cannot decode
        raise RTStructImportError(f"the structure set is damaged: an attribute cannot be decoded ({exc})") from exc


def _decode(ds: Dataset) -> None:
    for tag in list(ds.keys()):
        if tag == CONTOUR_DATA:
            continue
        element = ds[tag]  # decodes a raw element
        if element.VR == "SQ":
            for item in element.value:
                _decode(item)


def _check_is_rtstruct(ds: Dataset) -> None:
    if ds.get("SOPClassUID") != RTSTRUCT_SOP_CLASS and ds.get("Modality") != "RTSTRUCT":
        raise RTStructImportError(
            f"not an RT Structure Set (Modality {ds.get('Modality', 'missing')!s}, "
            f"SOP Class {ds.get('SOPClassUID', 'missing')!s})"
        )
    if "StructureSetROISequence" not in ds:
        raise RTStructImportError("the RT Structure Set has no Structure Set ROI Sequence: it defines no ROI")


class _SliceGeometry:
    """The series' slice planes: unit row/column/normal directions (LPS) and positions."""

    def __init__(self, series: DicomSeries) -> None:
        affine = series.affine_lps
        self.shape = series.volume.array.shape
        self.step_i = float(np.linalg.norm(affine[:3, 0]))  # column spacing, mm
        self.step_j = float(np.linalg.norm(affine[:3, 1]))  # row spacing, mm
        self.row = affine[:3, 0] / self.step_i
        self.col = affine[:3, 1] / self.step_j
        self.normal = np.cross(self.row, self.col)
        self.origins = np.array([s.position_lps for s in series.slices], dtype=float)
        # Per-slice positions, not origin + k * mean step: slices may be unevenly spaced.
        self.heights = self.origins @ self.normal
        self.half_spacing = 0.5 * float(np.median(np.abs(np.diff(self.heights))))
        self.by_uid: dict[str, list[int]] = defaultdict(list)
        for k, s in enumerate(series.slices):
            self.by_uid[s.sop_instance_uid].append(k)
        self.frames = {(s.sop_instance_uid, getattr(s, "frame_number", None)): k for k, s in enumerate(series.slices)}

    def referenced_slice(self, contour: Dataset, height: float) -> int | None:
        """The slice index the contour references, None when dangling or absent."""
        for image in contour.get("ContourImageSequence", []):
            uid = str(image.get("ReferencedSOPInstanceUID", ""))
            frame = image.get("ReferencedFrameNumber")
            if frame is not None:
                frame = int(np.atleast_1d(frame)[0])
                if (uid, frame) in self.frames:
                    return self.frames[(uid, frame)]
            candidates = self.by_uid.get(uid)
            if candidates:  # a multi-frame image without frame number: nearest frame
                return min(candidates, key=lambda k: abs(self.heights[k] - height))
        return None

    def in_plane(self, points: np.ndarray, k: int) -> np.ndarray:
        """Continuous (i, j) voxel coordinates (N, 2) of LPS points (N, 3) on slice k."""
        offset = points - self.origins[k]
        return np.column_stack([offset @ self.row / self.step_i, offset @ self.col / self.step_j])


def _contour_values(contour: Dataset) -> np.ndarray:
    """Contour Data as a float array. Still encoded (as read from a file, or as
    ``engine.io.rtstruct`` makes it), its bytes are parsed by NumPy at once rather than
    by pydicom into one object per coordinate.

    Raises:
        TypeError, ValueError: a value that is not a number.
    """
    element = contour.get_item(CONTOUR_DATA)
    if element is not None and element.is_raw and element.value:
        text = element.value.rstrip(b"\x00 ")  # padding: a space, or NUL by some writers
        if text:
            return np.array(text.split(b"\\"), dtype=float)
    return np.atleast_1d(np.asarray(contour.get("ContourData", []), dtype=float))


def _contour_points(contour: Dataset, roi_name: str, index: int) -> np.ndarray:
    """Contour Data as (N, 3) LPS mm; raises on a malformed value list."""
    try:
        values = _contour_values(contour)
    except (TypeError, ValueError) as exc:
        raise RTStructImportError(f"ROI {roi_name!r}, contour {index}: Contour Data is not a list of numbers") from exc
    if values.size % 3 or not np.all(np.isfinite(values)):
        raise RTStructImportError(
            f"ROI {roi_name!r}, contour {index}: Contour Data must hold finite (x, y, z) "
            f"triplets, got {values.size} values"
        )
    return values.reshape(-1, 3)


class _Tally:
    """Counts of contour-level events of one ROI, turned into notes at the end."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = defaultdict(int)
        self.worst_mm: dict[str, float] = defaultdict(float)

    def add(self, event: str, mm: float = 0.0) -> None:
        self.counts[event] += 1
        self.worst_mm[event] = max(self.worst_mm[event], mm)

    def notes(self, total: int) -> list[str]:
        c, w = self.counts, self.worst_mm
        texts = {
            "dangling": f"{c['dangling']} of {total} contours matched to slices by position "
            "(their Referenced SOP Instance UID is not in the series)",
            "unreferenced": f"{c['unreferenced']} of {total} contours matched to slices by "
            "position (no Referenced SOP Instance UID)",
            "moved": f"{c['moved']} contours lie off the slice they reference (up to "
            f"{w['moved']:.1f} mm away, over half a slice spacing); placed by their "
            "coordinates",
            "between": f"{c['between']} contours lie between slice planes (up to "
            f"{w['between']:.2f} mm from the nearest); placed on the nearest slice",
            "outside_range": f"{c['outside_range']} contours lie outside the series' slice "
            f"range (up to {w['outside_range']:.1f} mm beyond it); not rasterised",
            "tilted": f"{c['tilted']} contours are not parallel to the series' slices "
            f"(spanning up to {w['tilted']:.1f} mm along the slice normal); not rasterised",
            "clipped": f"{c['clipped']} contours extend beyond the image in-plane; clipped to it",
            "empty": f"{c['empty']} contours enclose no voxel centre",
            "few_points": f"{c['few_points']} contours have fewer than 3 points; not rasterised",
            "not_closed": f"{c['not_closed']} contours are not CLOSED_PLANAR (points or open lines); not rasterised",
        }
        return [texts[event] for event in texts if c.get(event)]


def _three_distinct(points: np.ndarray) -> bool:
    """Whether ``points`` (N, 3) hold at least three distinct points (two passes, no
    sort: ``np.unique(axis=0)`` cost a quarter of the round-trip check)."""
    if len(points) < 3:
        return False
    others = points[np.any(points != points[0], axis=1)]
    return bool(others.size) and bool(np.any(others != others[0], axis=1).any())


def _place(geometry: _SliceGeometry, contour: Dataset, points: np.ndarray, tally: _Tally) -> int | None:
    """Slice index for a contour's points (N, 3), or None (with the reason tallied)."""
    heights = points @ geometry.normal
    spread = float(np.ptp(heights))
    if spread > max(PLANE_TOLERANCE_MM, geometry.half_spacing):
        tally.add("tilted", spread)
        return None
    height = float(heights.mean())
    nearest = int(np.argmin(np.abs(geometry.heights - height)))
    distance = float(np.abs(heights - geometry.heights[nearest]).max())
    referenced = geometry.referenced_slice(contour, height)
    if referenced is not None:
        off = float(np.abs(heights - geometry.heights[referenced]).max())
        if off <= geometry.half_spacing:
            if off > PLANE_TOLERANCE_MM:
                tally.add("between", off)
            return referenced
        tally.add("moved", off)
    elif "ContourImageSequence" in contour and any(
        i.get("ReferencedSOPInstanceUID") for i in contour.ContourImageSequence
    ):
        tally.add("dangling")
    else:
        tally.add("unreferenced")
    if distance > geometry.half_spacing:
        tally.add("outside_range", distance - geometry.half_spacing)
        return None
    if distance > PLANE_TOLERANCE_MM:
        tally.add("between", distance)
    return nearest


def _polygon_pixels(
    rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]
) -> tuple[tuple[slice, slice], np.ndarray]:
    """The pixels of a ``shape`` (rows, columns) grid whose centres (whole indices) lie
    inside the closed polygon of vertices (``rows``, ``cols``), each (N,) float64, or on
    its boundary: (box of the grid, bool mask inside it).

    Pixel for pixel what ``skimage.draw.polygon`` gives (O'Rourke's crossing test: a
    pixel is in when the edges its row crosses to its right, or those to its left, are
    odd in number; a vertex within 1e-12 of a centre takes that pixel), computed one
    row at a time from the crossings instead of testing every pixel of the polygon's
    box against every edge, which made the RTSTRUCT round-trip check most of the export
    of a large structure.
    """
    r0, r1 = (int(np.clip(np.floor(v), 0, shape[0])) for v in (rows.min(), rows.max() + 1))
    c0, c1 = (int(np.clip(np.floor(v), 0, shape[1])) for v in (cols.min(), cols.max() + 1))
    if r1 <= r0 or c1 <= c0:
        return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), dtype=bool)
    prev_r, prev_c = np.roll(rows, 1), np.roll(cols, 1)
    low, high = np.minimum(rows, prev_r), np.maximum(rows, prev_r)
    inside = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    # Rows crossed with one end above the row and the other at or below it, counted by
    # the columns at or after the crossing; and with one end below and the other at or
    # above, counted by the columns strictly after it.
    for first, stop, column in (
        (np.ceil(low), np.ceil(high), np.ceil),
        (np.floor(low) + 1, np.floor(high) + 1, lambda x: np.floor(x) + 1),
    ):
        first, stop = np.clip(first, r0, r1).astype(np.intp), np.clip(stop, r0, r1).astype(np.intp)
        count = np.maximum(stop - first, 0)
        edge = np.repeat(np.arange(rows.size), count)
        r = np.repeat(first, count) + np.arange(edge.size) - np.repeat(np.cumsum(count) - count, count)
        x = (prev_c[edge] - cols[edge]) * (r - rows[edge]) / (prev_r[edge] - rows[edge]) + cols[edge]
        at = np.clip(column(x), c0, c1).astype(np.intp) - c0
        width = c1 - c0 + 1
        toggles = np.bincount((r - r0) * width + at, minlength=(r1 - r0) * width).reshape(r1 - r0, width)
        inside |= (np.cumsum(toggles, axis=1)[:, :-1] & 1).astype(bool)
    vertex = (np.abs(rows - np.rint(rows)) < 1e-12) & (np.abs(cols - np.rint(cols)) < 1e-12)
    vr, vc = np.rint(rows[vertex]).astype(np.intp), np.rint(cols[vertex]).astype(np.intp)
    on = (vr >= r0) & (vr < r1) & (vc >= c0) & (vc < c1)
    inside[vr[on] - r0, vc[on] - c0] = True
    return (slice(r0, r1), slice(c0, c1)), inside


def _fill(
    crop_k: np.ndarray,
    corner: tuple[int, int],
    ij: np.ndarray,
    grid_ij: tuple[int, int],
    tally: _Tally,
) -> None:
    """XOR the pixels whose centres lie inside polygon ``ij`` (N, 2; whole-slice voxel
    indices, of a slice of ``grid_ij`` pixels) into ``crop_k``, the part of the slice
    from ``corner`` on."""
    if ij.min(initial=0.0) < -0.5 or np.any(ij[:, 0] > grid_ij[0] - 0.5) or np.any(ij[:, 1] > grid_ij[1] - 0.5):
        tally.add("clipped")
    box, inside = _polygon_pixels(ij[:, 0] - corner[0], ij[:, 1] - corner[1], crop_k.shape)
    if not inside.any():
        tally.add("empty")
    # Even-odd: a second polygon over a pixel (a hole) removes it again.
    crop_k[box] ^= inside


def _box(placed: list[tuple[int, np.ndarray]], shape: tuple[int, ...]) -> tuple[slice, slice, slice]:
    """The box of the grid (I, J, K slices) holding every pixel centre the polygons
    ``(k, ij)`` can enclose; empty when there are none."""
    if not placed:
        return (slice(0, 0),) * 3
    points = np.concatenate([ij for _, ij in placed])
    lo = np.clip(np.floor(points.min(axis=0)).astype(int), 0, shape[:2])
    hi = np.clip(np.ceil(points.max(axis=0)).astype(int) + 1, lo, shape[:2])
    ks = [k for k, _ in placed]
    return (
        slice(int(lo[0]), int(hi[0])),
        slice(int(lo[1]), int(hi[1])),
        slice(min(ks), max(ks) + 1),
    )


def _rasterise(
    roi_contour: Dataset | None, name: str, geometry: _SliceGeometry
) -> tuple[tuple[slice, slice, slice], np.ndarray, int, list[str]]:
    """(box, mask inside it, contours filled, notes) of one ROI."""
    contours = list(roi_contour.get("ContourSequence", [])) if roi_contour is not None else []
    if not contours:
        empty = np.zeros((0, 0, 0), dtype=bool)
        return (slice(0, 0),) * 3, empty, 0, ["no contours: empty mask"]
    tally = _Tally()
    placed = []
    for index, contour in enumerate(contours, start=1):
        if str(contour.get("ContourGeometricType", "")).upper() != "CLOSED_PLANAR":
            tally.add("not_closed")
            continue
        points = _contour_points(contour, name, index)
        if not _three_distinct(points):
            tally.add("few_points")
            continue
        k = _place(geometry, contour, points, tally)
        if k is not None:
            placed.append((k, geometry.in_plane(points, k)))
    box = _box(placed, geometry.shape)
    crop = np.zeros(tuple(s.stop - s.start for s in box), dtype=bool)
    corner = (box[0].start, box[1].start)
    for k, ij in placed:
        _fill(crop[:, :, k - box[2].start], corner, ij, geometry.shape[:2], tally)
    return box, crop, len(placed), tally.notes(len(contours))


def _color(roi_contour: Dataset | None) -> tuple[int, int, int] | None:
    """ROI Display Color (r, g, b); None when absent or not three whole numbers (a
    display hint only, so a damaged one is dropped rather than refusing the ROI)."""
    value = roi_contour.get("ROIDisplayColor") if roi_contour is not None else None
    try:
        rgb = tuple(int(v) for v in value) if value is not None else ()
    except (TypeError, ValueError):
        return None
    return rgb if len(rgb) == 3 else None


def _check_frame_of_reference(ds: Dataset, series: DicomSeries) -> list[str]:
    """Raise when an ROI is in another Frame of Reference than the series; notes otherwise.

    Each ROI's Referenced Frame of Reference UID (C.8.8.5) is what its contours are in;
    the Referenced Frame of Reference Sequence stands in for ROIs that lack one.
    """
    series_for = series.frame_of_reference_uid
    listed = {str(item.get("FrameOfReferenceUID", "")) for item in ds.get("ReferencedFrameOfReferenceSequence", [])} - {
        ""
    }
    for roi in ds.StructureSetROISequence:
        roi_for = str(roi.get("ReferencedFrameOfReferenceUID", "") or "")
        declared = {roi_for} if roi_for else listed
        if series_for and declared and series_for not in declared:
            raise RTStructImportError(
                f"ROI {str(roi.get('ROIName', ''))!r} is in another Frame of Reference "
                f"than the image series ({', '.join(sorted(declared))} vs {series_for}): "
                "its coordinates do not describe this scan; register the images first "
                "or pick the matching series"
            )
    if not series_for or not (
        listed or any(roi.get("ReferencedFrameOfReferenceUID") for roi in ds.StructureSetROISequence)
    ):
        return [
            (
                "Frame of Reference UID missing on the series or the structure set: "
                "geometry placed by coordinates without that check"
            )
        ]
    return []


def _number(item: Dataset, keyword: str, where: str) -> int:
    """An integer attribute (ROI Number, Referenced ROI Number) or a clear error."""
    try:
        return int(item[keyword].value)
    except (KeyError, TypeError, ValueError) as exc:
        raise RTStructImportError(f"{where} without a valid {keyword}") from exc


def import_rtstruct(source: Dataset | str | os.PathLike, series: DicomSeries) -> list[ImportedROI]:
    """Rasterise every ROI of an RTSTRUCT onto ``series``' voxel grid.

    ``source`` is an RTSTRUCT dataset or file path. Returns one :class:`ImportedROI`
    per Structure Set ROI, in file order, each with a bool mask of shape (I, J, K) =
    (column, row, slice) of ``series.volume`` (spacing in mm, RAS affine
    ``series.volume.affine``), kept as its box only (``ImportedROI.crop``). Standard: DICOM PS3.3 A.19, C.8.8.5 (Structure Set),
    C.8.8.6 (ROI Contour), C.8.8.8 (RT ROI Observations). See the module docstring for
    the slice matching, fill rule and which problems are notes rather than errors.

    Raises:
        RTStructImportError: not an RTSTRUCT, another Frame of Reference UID than the
            series, missing or duplicated ROI Numbers, an ROI Contour for an undefined
            ROI (or two for one ROI), or malformed Contour Data.
    """
    ds = source if isinstance(source, Dataset) else read_rtstruct(source)
    _decode_all(ds)
    _check_is_rtstruct(ds)
    common_notes = _check_frame_of_reference(ds, series)
    geometry = _SliceGeometry(series)

    numbers = [_number(roi, "ROINumber", "a Structure Set ROI") for roi in ds.StructureSetROISequence]
    if len(set(numbers)) != len(numbers):
        raise RTStructImportError(f"duplicated ROI Numbers in the structure set: {numbers}")
    contours_by_roi: dict[int, Dataset] = {}
    for item in ds.get("ROIContourSequence", []):
        number = _number(item, "ReferencedROINumber", "an ROI Contour")
        if number not in numbers:
            raise RTStructImportError(
                f"an ROI Contour refers to ROI Number {number}, which the Structure Set ROI Sequence does not define"
            )
        if number in contours_by_roi:
            raise RTStructImportError(f"two ROI Contours for ROI Number {number}")
        contours_by_roi[number] = item
    types = {
        _number(obs, "ReferencedROINumber", "an RT ROI Observation"): str(obs.get("RTROIInterpretedType", "") or "")
        for obs in ds.get("RTROIObservationsSequence", [])
    }

    rois = []
    for number, roi in zip(numbers, ds.StructureSetROISequence, strict=True):
        name = str(roi.get("ROIName", "") or "")
        box, crop, filled, notes = _rasterise(contours_by_roi.get(number), name, geometry)
        rois.append(
            ImportedROI(
                roi_number=number,
                name=name,
                interpreted_type=types.get(number, ""),
                color=_color(contours_by_roi.get(number)),
                crop=crop,
                contours=filled,
                notes=common_notes + notes,
                box=box,
                grid_shape=geometry.shape,
            )
        )
    return rois
