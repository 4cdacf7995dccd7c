"""Write a DICOM RT Structure Set (RTSTRUCT) from a label map on a DICOM series' grid.

Follows DICOM PS3.3 A.19 (RT Structure Set IOD): Patient, General Study, RT Series,
Frame of Reference, General Equipment, Structure Set, ROI Contour (C.8.8.6), RT ROI
Observations and SOP Common modules.

Contours: CLOSED_PLANAR polygons traced per slice at the 0.5 iso-line of each
structure's mask (marching squares, scikit-image ``find_contours``, inside the
structure's box; points on the straight line between their neighbours dropped), one
contour per connected boundary: an island is its own contour, and a hole is its own
CLOSED_PLANAR contour inside its island. Readers fill them with the even-odd rule (a point is inside
when it lies inside an odd number of the slice's contours), which is how planning
systems and ``engine.io.rtstruct_import`` rasterise them. Polygons with fewer than 3
distinct points or zero area are not written.

Geometry: each contour's points are placed on its slice's own plane, from that slice's
Image Position (Patient) and the row/column directions, so they are exactly planar and
on the slice also for non-axial or unevenly spaced series. Coordinates are LPS mm,
Decimal Strings of at most 16 characters (PS3.5 6.2). Each contour references its
slice's SOP Instance UID (and Referenced Frame Number for a multi-frame image).
Provenance (model name, weights SHA-256, Delineo version) is recorded in Manufacturer,
Manufacturer's Model Name, Software Versions and each ROI Description.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds
from skimage.measure import find_contours

import engine
from engine.errors import ExportError
from engine.io.atomic import write_atomically
from engine.io.dicom_series import RTSTRUCT_SOP_CLASS, DicomSeries
from engine.structure import Structure
from engine.volume import LabelMap

STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
_COPIED_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)


CONTOUR_DATA = Tag(0x3006, 0x0050)  # Contour Data, DS
# Coordinates below this magnitude (mm) fit a 16-character Decimal String at 0.01 mm.
_FIXED_POINT_LIMIT_MM = 1e12


class RTStructError(ExportError):
    """A label map that does not lie on the referenced series' grid."""


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters (PS3.5 6.2): 0.01 mm where that fits.

    Raises:
        RTStructError: ``value`` is NaN or infinite.
    """
    if not np.isfinite(value):
        raise RTStructError(f"a contour coordinate is not a finite number ({value})")
    text = f"{value:.2f}"
    # |value| >= 1e13 mm: pydicom keeps the most digits that fit in 16 characters.
    if len(text) > 16:
        text = format_number_as_ds(float(value))
    return "0.00" if text == "-0.00" else text


def contour_data_bytes(values: np.ndarray) -> bytes:
    """The encoded value of Contour Data (DS, VM 3N) for LPS coordinates ``values`` (3N,)
    in mm: each a Decimal String of ``_ds`` joined by backslashes, padded with a space
    to an even length (PS3.5 6.2, 6.4).

    Made with one ``format`` per coordinate instead of one pydicom ``DSfloat`` object per
    coordinate (a structure set of a 512 x 512 CT has 100,000 and more), and stored as
    pydicom's undecoded element (``RawDataElement``): written to the file as it is, read
    back by ``engine.io.rtstruct_import`` from the same bytes.

    Raises:
        RTStructError: a value is NaN or infinite.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(values)):
        bad = values[~np.isfinite(values)][0]
        raise RTStructError(f"a contour coordinate is not a finite number ({bad})")
    if np.abs(values).max(initial=0.0) < _FIXED_POINT_LIMIT_MM:
        # What _ds gives, for every value at once: "-0.00" only comes from |value| < 0.005.
        values = np.where(np.abs(values) < 0.005, 0.0, values)
        text = "\\".join(map("{:.2f}".format, values.tolist()))
    else:
        text = "\\".join(_ds(v) for v in values.tolist())
    data = text.encode("ascii")
    return data + b" " if len(data) % 2 else data


def _area(polygon: np.ndarray) -> float:
    """Unsigned area of a polygon (N, 2) in squared voxel units (shoelace formula)."""
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(x @ np.roll(y, -1) - y @ np.roll(x, -1)))


def _corners_only(points: np.ndarray) -> np.ndarray:
    """A closed polygon (N, 2) without the points on the straight line between their
    neighbours: the same polygon, and on a mask's iso-line (a vertex at every pixel
    edge) a half to a third of the points to write, read and import. (skimage's
    ``approximate_polygon`` returns its input unchanged at tolerance 0, and its
    Douglas-Peucker at any tolerance is a hundred times slower than this.)"""
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    turn = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    return points[np.abs(turn) > 1e-9]


def slice_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """Closed polygons (N, 2) in continuous (i, j) voxel indices around a 2D mask (I, J).

    Each returned polygon is open (last point != first), with at least 3 distinct
    points and a non-zero area, and has no point on the line between its neighbours;
    holes come out as separate polygons inside their island.
    """
    padded = np.pad(mask.astype(np.uint8), 1)
    polygons = []
    for contour in find_contours(padded, 0.5):
        points = _corners_only(contour[:-1] - 1.0 if np.allclose(contour[0], contour[-1]) else contour - 1.0)
        # A polygon of non-zero area has at least 3 distinct points.
        if _area(points) > 1e-6:
            polygons.append(points)
    return polygons


def build_rtstruct(
    labels: LabelMap,
    series: DicomSeries,
    structures: Sequence[Structure],
    model_name: str,
    weights_sha256: str,
) -> Dataset:
    """RTSTRUCT dataset for ``labels`` (I, J, K), which must be on ``series``' grid.

    ``structures`` gives each ROI's label value, name, colour and RT ROI Interpreted
    Type; ROI Numbers are 1, 2, ... in that order. ``weights_sha256`` is the full hex
    digest of the model's weights (provenance).

    Raises:
        RTStructError: the label map's shape or affine differs from the series', or the
            series has no Frame of Reference UID.
    """
    volume = series.volume
    if labels.array.shape != volume.array.shape or not np.allclose(labels.affine, volume.affine, atol=1e-3):
        raise RTStructError("the label map is not on the grid of the referenced series")
    affine_lps = series.affine_lps
    header = series.header
    now = dt.datetime.now()

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = generate_uid()
    for keyword in _COPIED_PATIENT_STUDY:
        setattr(ds, keyword, header.get(keyword, ""))
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 900
    ds.SeriesDescription = f"Delineo {model_name}"
    ds.OperatorsName = ""
    ds.InstanceNumber = 1
    ds.Manufacturer = "Delineo"
    ds.ManufacturerModelName = model_name
    # Software Versions is LO (64 characters per value): the digest is a value of its own,
    # not the last, which takes the padding space when the element's length is odd.
    ds.SoftwareVersions = [f"delineo {engine.__version__}", weights_sha256, model_name]
    ds.StructureSetLabel = f"Delineo {model_name}"[:16]
    ds.StructureSetName = f"Delineo {model_name}"
    ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.StructureSetTime = now.strftime("%H%M%S")
    ds.ApprovalStatus = "UNAPPROVED"
    if not series.frame_of_reference_uid:
        raise RTStructError("the referenced series has no Frame of Reference UID")
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = header.get("PositionReferenceIndicator", "")

    contour_images = DicomSequence()
    # One item per image: the frames of a multi-frame image are all referenced together.
    for uid, sop_class in {s.sop_instance_uid: s.sop_class_uid for s in series.slices}.items():
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = uid
        contour_images.append(item)
    ref_series = Dataset()
    ref_series.SeriesInstanceUID = series.series_instance_uid
    ref_series.ContourImageSequence = contour_images
    ref_study = Dataset()
    ref_study.ReferencedSOPClassUID = STUDY_COMPONENT_SOP_CLASS
    ref_study.ReferencedSOPInstanceUID = series.study_instance_uid
    ref_study.RTReferencedSeriesSequence = DicomSequence([ref_series])
    ref_for = Dataset()
    ref_for.FrameOfReferenceUID = series.frame_of_reference_uid
    ref_for.RTReferencedStudySequence = DicomSequence([ref_study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([ref_for])

    roi_set, roi_contours, observations = (
        DicomSequence(),
        DicomSequence(),
        DicomSequence(),
    )
    for number, structure in enumerate(structures, start=1):
        # Traced inside the structure's box only: on a 512 x 512 grid most of each slice
        # is empty, and a mask of the whole grid per structure costs 50 MB or more.
        box, mask = labels.mask_in_box(structure.label)
        corner = np.array([box[0].start, box[1].start], dtype=float)
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = series.frame_of_reference_uid
        roi.ROIName = structure.name
        roi.ROIDescription = f"Delineo {engine.__version__}, model {model_name}, weights sha256 {weights_sha256}"
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi_set.append(roi)

        contours = DicomSequence()
        for k_box in np.flatnonzero(mask.any(axis=(0, 1))):
            ref = series.slices[box[2].start + k_box]
            for in_box in slice_polygons(mask[:, :, k_box]):
                polygon = in_box + corner  # (i, j) voxel indices of the whole slice
                # On slice k's own plane: its position plus in-plane column/row steps.
                points = (
                    np.asarray(ref.position_lps, dtype=float)
                    + polygon[:, :1] * affine_lps[:3, 0]
                    + polygon[:, 1:] * affine_lps[:3, 1]
                )
                contour = Dataset()
                image = Dataset()
                image.ReferencedSOPClassUID = ref.sop_class_uid
                image.ReferencedSOPInstanceUID = ref.sop_instance_uid
                if getattr(ref, "frame_number", None) is not None:
                    image.ReferencedFrameNumber = int(ref.frame_number)
                contour.ContourImageSequence = DicomSequence([image])
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.NumberOfContourPoints = len(points)
                data = contour_data_bytes(points.ravel())
                contour[CONTOUR_DATA] = RawDataElement(CONTOUR_DATA, "DS", len(data), data, 0, False, True)
                # Explicit VR little endian, as written: pydicom then writes the raw
                # value as it is instead of decoding it first.
                contour.set_original_encoding(False, True, default_encoding)
                contours.append(contour)
        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = list(structure.color)
        roi_contour.ReferencedROINumber = number
        if contours:
            roi_contour.ContourSequence = contours
        roi_contours.append(roi_contour)

        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.ROIObservationLabel = structure.name[:16]
        obs.RTROIInterpretedType = structure.interpreted_type
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = roi_set
    ds.ROIContourSequence = roi_contours
    ds.RTROIObservationsSequence = observations

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def write_rtstruct(ds: Dataset, path: str | os.PathLike) -> Path:
    """Write an RTSTRUCT dataset as a DICOM Part 10 file (temporary name, then rename)."""
    return write_atomically(path, lambda tmp: ds.save_as(tmp, enforce_file_format=True))
