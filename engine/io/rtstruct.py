"""Write a DICOM RT Structure Set (RTSTRUCT) from a label map on a DICOM series' grid.

Follows DICOM PS3.3 A.19 (RT Structure Set IOD): Patient, General Study, RT Series,
Frame of Reference, General Equipment, Structure Set, ROI Contour, RT ROI Observations and SOP Common
modules. Contours are CLOSED_PLANAR polygons traced per slice at the 0.5 iso-line of
each structure's mask (marching squares, scikit-image ``find_contours``), one contour
per connected boundary: an island is its own contour, and a hole is a separate closed
contour inside its island (planning systems fill these with the even-odd rule).
Coordinates are LPS mm written with at most 16 characters per Decimal String value.
Each contour references its slice's SOP Instance UID.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from skimage.measure import find_contours

import engine
from engine.io.atomic import write_atomically
from engine.io.dicom_series import RTSTRUCT_SOP_CLASS, DicomSeries
from engine.models.registry import Structure
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


class RTStructError(ValueError):
    """A label map that does not lie on the referenced series' grid."""


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters (PS3.5 6.2), 0.01 mm resolution."""
    text = f"{value:.2f}"
    return "0.00" if text == "-0.00" else text


def slice_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """Closed polygons (N, 2) in continuous (i, j) voxel indices around a 2D mask (I, J).

    Each returned polygon is open (last point != first) with at least 3 distinct points.
    """
    padded = np.pad(mask.astype(np.uint8), 1)
    polygons = []
    for contour in find_contours(padded, 0.5):
        points = (
            contour[:-1] - 1.0
            if np.allclose(contour[0], contour[-1])
            else contour - 1.0
        )
        if len(np.unique(np.round(points, 3), axis=0)) >= 3:
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

    Raises:
        RTStructError: the label map's shape or affine differs from the series'.
    """
    volume = series.volume
    if labels.array.shape != volume.array.shape or not np.allclose(
        labels.affine, volume.affine, atol=1e-3
    ):
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
    ds.SoftwareVersions = [
        f"delineo {engine.__version__}",
        f"weights sha256 {weights_sha256[:16]}",
    ]
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
    for s in series.slices:
        item = Dataset()
        item.ReferencedSOPClassUID = s.sop_class_uid
        item.ReferencedSOPInstanceUID = s.sop_instance_uid
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
        mask = labels.array == structure.label
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = series.frame_of_reference_uid
        roi.ROIName = structure.name
        roi.ROIDescription = f"{model_name} (weights sha256 {weights_sha256[:16]})"
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi_set.append(roi)

        contours = DicomSequence()
        for k in np.flatnonzero(mask.any(axis=(0, 1))):
            for polygon in slice_polygons(mask[:, :, k]):
                voxels = np.column_stack(
                    [polygon, np.full(len(polygon), k), np.ones(len(polygon))]
                )
                points = (affine_lps @ voxels.T)[:3].T
                contour = Dataset()
                image = Dataset()
                image.ReferencedSOPClassUID = series.slices[k].sop_class_uid
                image.ReferencedSOPInstanceUID = series.slices[k].sop_instance_uid
                contour.ContourImageSequence = DicomSequence([image])
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.NumberOfContourPoints = len(points)
                contour.ContourData = [_ds(v) for v in points.ravel()]
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
