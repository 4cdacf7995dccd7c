"""Write a DICOM Segmentation (SEG) from a label map on a DICOM series' grid (highdicom).

Follows DICOM PS3.3 A.51 (Segmentation IOD): a BINARY segmentation with one segment per
structure, in the order given, numbered 1..N, including structures the model did not
find (a segment without frames). Frame k of the source series (voxel index K = k) is
frame-for-frame the segmentation plane at the same Image Position (Patient); frames
without any voxel of a segment are left out (highdicom ``omit_empty_frames``). Each
segment references the source images it was derived from.

Each segment description (PS3.3 C.8.20.2) carries:

* Segment Label: the structure's name (TG-263); Segment Description: its label value.
* Algorithm Type AUTOMATIC; Algorithm Identification: the model name, version = the
  first 16 hex digits of the weights' SHA-256, family DCM 123110 "Artificial Intelligence".
* Segmented Property Category and Type (SNOMED CT codes as pydicom names them):
  organs at risk (RT ROI Interpreted Type ORGAN, OAR, AVOIDANCE) are category
  "Anatomical Structure" (91723000) with the organ's own code where the TG-263 name is in
  ``ORGAN_CODES`` (laterality as a Segmented Property Type Modifier, e.g. Parotid_L =
  Parotid gland + Left), else "Organ" (91772007); targets (PTV, CTV, GTV) are category
  "Spatial and Relational Concept" (309825002) with "Planning/Clinical/Gross tumor
  volume" (228793007 / 228792002 / 228791009); any other type is "Anatomical
  Structure" / "Body structure" (123037004).
* Recommended Display CIELab Value from the structure's sRGB colour (ICC D50 PCS-Lab,
  converted by LittleCMS through Pillow).

The source images are described by per-slice datasets made from the series' header and
each slice's UIDs and position (``source_datasets``): highdicom needs only their
metadata, never their pixels, so the original files need not be read again.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from PIL import Image, ImageCms
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.valuerep import format_number_as_ds

import engine
from engine.errors import ExportError
from engine.io.atomic import write_atomically
from engine.io.dicom_series import DicomSeries
from engine.structure import Structure
from engine.volume import LabelMap

# TG-263 name -> (SNOMED CT organ code, laterality modifier or None).
ORGAN_CODES = {
    "Brainstem": (codes.SCT.BrainStem, None),
    "SpinalCord": (codes.SCT.SpinalCord, None),
    "Parotid_L": (codes.SCT.ParotidGland, codes.SCT.Left),
    "Parotid_R": (codes.SCT.ParotidGland, codes.SCT.Right),
    "Esophagus": (codes.SCT.Esophagus, None),
    "Larynx": (codes.SCT.Larynx, None),
    "Mandible": (codes.SCT.Mandible, None),
    "Bladder": (codes.SCT.Bladder, None),
    "Rectum": (codes.SCT.Rectum, None),
    "Prostate": (codes.SCT.Prostate, None),
}
TARGET_CODES = {
    "PTV": codes.SCT.PlanningTargetVolume,
    "CTV": codes.SCT.ClinicalTargetVolume,
    "GTV": codes.SCT.GrossTumorVolume,
}
ORGAN_TYPES = {"ORGAN", "OAR", "AVOIDANCE"}
# Patient and study attributes highdicom copies from the source; type 2, so may be empty.
_TYPE2_FROM_SOURCE = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


class DicomSegError(ExportError):
    """A label map or series that cannot be written as a DICOM SEG; the message says why."""


def property_codes(structure: Structure) -> tuple:
    """(category, type, type modifier or None) codes for a structure (see module doc)."""
    kind = structure.interpreted_type.upper()
    if kind in TARGET_CODES:
        return codes.SCT.SpatialAndRelationalConcept, TARGET_CODES[kind], None
    if kind in ORGAN_TYPES:
        organ, laterality = ORGAN_CODES.get(structure.name, (codes.SCT.Organ, None))
        return codes.SCT.AnatomicalStructure, organ, laterality
    return codes.SCT.AnatomicalStructure, codes.SCT.BodyStructure, None


@functools.cache
def _srgb_to_lab() -> ImageCms.ImageCmsTransform:
    # Built once per process: building it took 8 ms, once per segment of every SEG.
    return ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")


def cielab(color: tuple[int, int, int]) -> hd.color.CIELabColor:
    """The CIELab (D50) equivalent of an 8-bit sRGB colour (PS3.3 C.10.7.1.1)."""
    pixel = Image.fromarray(np.array([[color]], dtype=np.uint8), "RGB")
    lab = np.array(ImageCms.applyTransform(pixel, _srgb_to_lab()))[0, 0]
    # Pillow's LAB: L scaled to 0-255, a* and b* as signed bytes.
    a_star, b_star = lab[1:].astype(np.uint8).view(np.int8)
    return hd.color.CIELabColor(lab[0] * 100.0 / 255.0, float(a_star), float(b_star))


def _check_grid(labels: LabelMap, series: DicomSeries) -> None:
    volume = series.volume
    if labels.array.shape != volume.array.shape or not np.allclose(labels.affine, volume.affine, atol=1e-3):
        raise DicomSegError("the label map is not on the grid of the referenced series")
    if not series.frame_of_reference_uid:
        raise DicomSegError("the referenced series has no Frame of Reference UID")
    if not series.study_instance_uid or not series.series_instance_uid:
        raise DicomSegError(
            "the referenced series has no Study or Series Instance UID, so a DICOM SEG cannot reference it"
        )


def source_datasets(series: DicomSeries) -> list[Dataset]:
    """Metadata-only datasets of the source images, one per slice (K order).

    For single-frame images: the series header with each slice's SOP Class/Instance UID
    and Image Position (Patient) (LPS mm). For one multi-frame (enhanced) image: its
    header, once. Slice Thickness, when absent from the header, is the slice spacing.
    """
    header = copy.deepcopy(series.header)  # Dataset.copy() shares the elements' dict
    for keyword in _TYPE2_FROM_SOURCE:
        if keyword not in header:
            setattr(header, keyword, "")
    if not str(header.get("SliceThickness", "") or ""):
        header.SliceThickness = format_number_as_ds(series.volume.spacing[2])
    if any(s.frame_number is not None for s in series.slices):
        return [header]
    # The header's elements are shared by the slices' datasets, not copied (a deep copy
    # per slice took half of a 512 x 512 x 200 CT's SEG): highdicom only reads them.
    # The per-slice attributes are left out of the shared ones, so that setting them
    # makes new elements instead of changing a shared one.
    per_slice = {Tag(k) for k in ("SOPClassUID", "SOPInstanceUID", "ImagePositionPatient")}
    shared = {tag: element for tag, element in header.items() if tag not in per_slice}
    datasets = []
    for s in series.slices:
        ds = Dataset(dict(shared))
        ds.SOPClassUID = s.sop_class_uid
        ds.SOPInstanceUID = s.sop_instance_uid
        ds.ImagePositionPatient = [format_number_as_ds(v) for v in s.position_lps]
        datasets.append(ds)
    return datasets


def _frame_order(series: DicomSeries) -> np.ndarray:
    """Voxel index K of each source frame, in source frame order."""
    frames = [s.frame_number for s in series.slices]
    if all(f is None for f in frames):
        return np.arange(len(frames))
    n_frames = int(series.header.get("NumberOfFrames", 0) or 0)
    numbers = [f for f in frames if f is not None]
    if len(numbers) < len(frames) or sorted(numbers) != list(range(1, n_frames + 1)):
        raise DicomSegError("the multi-frame source's frames are not exactly the volume's slices")
    return np.argsort(numbers)


def segment_description(
    number: int, structure: Structure, model_name: str, weights_sha256: str
) -> hd.seg.SegmentDescription:
    """The description of segment ``number`` (1-based) for ``structure``."""
    category, kind, modifier = property_codes(structure)
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=structure.name,
        segmented_property_category=category,
        segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=model_name,
            family=codes.DCM.ArtificialIntelligence,
            version=weights_sha256[:16],
            source="Delineo",
        ),
        display_color=cielab(structure.color),
    )
    description.SegmentDescription = f"label {structure.label}"
    if modifier is not None:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept.from_code(modifier)
        ]
    return description


def build_segmentation(
    labels: LabelMap,
    series: DicomSeries,
    structures: Sequence[Structure],
    model_name: str,
    weights_sha256: str,
) -> hd.seg.Segmentation:
    """DICOM SEG of ``labels`` (I, J, K), which must be on ``series``' grid.

    Segment n (1-based) is ``structures[n - 1]``: the voxels equal to its label value.

    Raises:
        DicomSegError: the label map's shape or affine differs from the series', the
            series lacks its Study, Series or Frame of Reference UID, or ``structures``
            is empty.
    """
    _check_grid(labels, series)
    if not structures:
        raise DicomSegError("a DICOM SEG needs at least one structure")
    # Label-map style input: segment numbers 1..N in one uint8/uint16 array (K, J, I),
    # far smaller than one binary array per structure; highdicom splits it per segment.
    lut = np.zeros(
        max(int(labels.array.max()), max(s.label for s in structures)) + 1,
        dtype=np.uint8 if len(structures) < 256 else np.uint16,
    )
    for number, structure in enumerate(structures, start=1):
        lut[structure.label] = number
    # (K, J, I) planes, C-contiguous when the label map is in Fortran order (as the
    # engine makes it): the look-up writes them in order, no transposing copy.
    planes = lut[labels.array.T]
    order = _frame_order(series)
    if not np.array_equal(order, np.arange(len(order))):
        planes = planes[order]  # source frame order
    # A list of values, as DICOM Software Versions (LO, VM 1-n) takes; highdicom's
    # annotation names a single string or a 1-tuple only.
    software_versions: Any = [f"delineo {engine.__version__}", f"weights sha256 {weights_sha256[:16]}"]
    seg = hd.seg.Segmentation(
        source_images=source_datasets(series),
        pixel_array=np.ascontiguousarray(planes),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            segment_description(n, s, model_name, weights_sha256) for n, s in enumerate(structures, start=1)
        ],
        series_instance_uid=hd.UID(),
        series_number=901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="Delineo",
        manufacturer_model_name=model_name,
        software_versions=software_versions,
        device_serial_number="none",
        content_label="DELINEO",
        content_description=f"Delineo {model_name}"[:64],
        series_description=f"Delineo {model_name} SEG"[:64],
    )
    return seg


def write_segmentation(seg: Dataset, path: str | os.PathLike) -> Path:
    """Write a SEG dataset as a DICOM Part 10 file (temporary name, then rename)."""
    return write_atomically(path, lambda tmp: seg.save_as(tmp, enforce_file_format=True))
