"""The pre-flight report: what is in an upload and whether each image series can be used.

``python -m engine info INPUT`` prints it as JSON; the web application shows it before a
job is queued. It reads headers and geometry only: no pixel data is decoded, except to
check that a plugin exists for each compressed transfer syntax. It never holds patient
names, nor Patient IDs unless asked for (``patient_ids=True``: the web application groups
scans by patient with them and keeps them out of the stored report).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from pydicom.pixels import get_decoder

from engine.errors import InputError
from engine.io.dicom_files import DicomFilesError, damaged_files_message, read_upload
from engine.io.dicom_series import (
    LPS_TO_RAS,
    DicomSeriesError,
    SeriesCandidate,
    group_series,
    no_series_message,
    plan_geometry,
)
from engine.io.nifti import NiftiError, read_volume
from engine.io.reader import is_nifti


def _plane(normal: np.ndarray) -> str:
    """axial, coronal or sagittal when the slice normal is within about 8 degrees of an axis."""
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < 0.99:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _transfer_syntax_problem(
    candidate: SeriesCandidate,
) -> tuple[list[str], str | None]:
    names, problem = set(), None
    for ds in {id(f.dataset): f.dataset for f in candidate.frames}.values():
        uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if uid is None:
            names.add("Implicit VR Little Endian (no file meta)")
            continue
        names.add(uid.name)
        try:
            available = get_decoder(uid).is_available
        except (NotImplementedError, ValueError):  # no decoder for this UID
            available = False
        if not available and problem is None:
            problem = f"{ds.filename}: pixel data in {uid.name} ({uid}) cannot be decoded: unsupported transfer syntax"
    return sorted(names), problem


def _number(value, kind: type[int | float]) -> int | float | None:
    """A header value for the report, None when absent or not a number."""
    try:
        number = kind(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _round(values, digits: int = 4) -> list[float]:
    return [round(float(v), digits) for v in values]


def series_report(candidate: SeriesCandidate) -> dict:
    """One series: modality, size, spacing (mm), orientation, gaps, tilt, and ok/refused."""
    header = candidate.header
    first = candidate.frames[0]
    syntaxes, problem = _transfer_syntax_problem(candidate)
    report: dict = {
        "key": candidate.key,
        "series_instance_uid": candidate.series_instance_uid,
        "modality": candidate.modality,
        "series_description": candidate.description,
        "series_number": _number(header.get("SeriesNumber"), int),
        "instances": candidate.instances,
        "images": len(candidate.frames),
        "multiframe": any(f.index is not None for f in candidate.frames),
        "patient_position": str(header.get("PatientPosition", "")) or None,
        "transfer_syntaxes": syntaxes,
        "image_orientation_patient": _round(first.orientation, 6),
        "plane": _plane(first.normal),
    }
    try:
        geometry = plan_geometry(candidate)
    except DicomSeriesError as exc:
        return {**report, "status": "refused", "reason": str(exc)}
    affine_ras = LPS_TO_RAS @ geometry.affine_lps
    slice_mm = float(np.linalg.norm(geometry.affine_lps[:3, 2]))
    report.update(
        {
            "size": [first.columns, first.rows, len(geometry.frames)],
            "spacing_mm": _round([first.pixel_spacing[1], first.pixel_spacing[0], slice_mm]),
            "axcodes": "".join(nib.aff2axcodes(affine_ras)),
            "affine_ras": [_round(row) for row in affine_ras],
            "slice_gaps_mm": {
                "min": round(float(geometry.steps_mm.min()), 4),
                "median": round(float(np.median(geometry.steps_mm)), 4),
                "max": round(float(geometry.steps_mm.max()), 4),
            },
            "tilt_deg": round(geometry.tilt_deg, 3),
            "slice_thickness_mm": _number(header.get("SliceThickness"), float),
        }
    )
    if problem:
        return {**report, "status": "refused", "reason": problem}
    return {**report, "status": "ok"}


def _other_object(ds: pydicom.Dataset) -> dict:
    try:
        return _describe_object(ds)
    except Exception:  # a damaged sequence of an object we only list: list it bare
        return {"file": str(ds.filename), "modality": str(ds.get("Modality", ""))}


def _describe_object(ds: pydicom.Dataset) -> dict:
    sop_class = pydicom.uid.UID(str(ds.get("SOPClassUID", "")))
    entry: dict[str, Any] = {
        "file": str(ds.filename),
        "modality": str(ds.get("Modality", "")),
        "sop_class": sop_class.name if sop_class.is_valid else str(sop_class),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
    }
    referenced = sorted(
        {
            str(series.SeriesInstanceUID)
            for ref_for in ds.get("ReferencedFrameOfReferenceSequence", [])
            for study in ref_for.get("RTReferencedStudySequence", [])
            for series in study.get("RTReferencedSeriesSequence", [])
            if "SeriesInstanceUID" in series
        }
        | {
            str(series.SeriesInstanceUID)
            for series in ds.get("ReferencedSeriesSequence", [])
            if "SeriesInstanceUID" in series
        }
    )
    if referenced:
        entry["referenced_series"] = referenced
    if "StructureSetROISequence" in ds:
        entry["rois"] = [str(roi.get("ROIName", "")) for roi in ds.StructureSetROISequence]
    return entry


def inspect_input(path: str | Path, patient_ids: bool = False) -> dict:
    """The pre-flight report of a DICOM folder/zip/file or a NIfTI file, as a JSON-able dict.

    Keys: ``input`` (file name), ``kind`` ("dicom" or "nifti"), ``files``, ``skipped``
    (one note per ignored file), ``series`` (one ``series_report`` per image series,
    largest first), ``other_objects`` (RTSTRUCT, SEG, ... that came with the images),
    ``selected`` (the key ``segment`` would use without ``--series``, or None when the
    user must choose or nothing is usable).

    With ``patient_ids=True`` it also has ``patient_ids``: the Patient ID (0010,0020) of
    each series, by key, where the series has a non-empty one (``{}`` for NIfTI). The
    Patient ID identifies a person: never log it, nor print it by default.

    Raises:
        InputError: the path does not exist, is a broken zip or NIfTI, holds a damaged
            DICOM file (one that may be a slice of the series), or no DICOM image at all.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path.name}: no such file or folder")
    if is_nifti(path):
        try:
            volume = read_volume(path)
        except NiftiError as exc:
            raise InputError(str(exc)) from exc
        return {
            "input": path.name,
            "kind": "nifti",
            "files": 1,
            "skipped": [],
            "series": [
                {
                    "key": None,
                    "modality": None,
                    "size": [int(n) for n in volume.array.shape],
                    "spacing_mm": _round(volume.spacing),
                    "axcodes": "".join(nib.aff2axcodes(volume.affine)),
                    "affine_ras": [_round(row) for row in volume.affine],
                    "status": "ok",
                }
            ],
            "other_objects": [],
            "selected": None,
            **({"patient_ids": {}} if patient_ids else {}),
        }
    if path.is_file() and path.suffix.lower() == ".zip" and not zipfile.is_zipfile(path):
        raise InputError(f"{path.name}: not a valid zip archive")
    try:
        upload = read_upload(path, pixels=False)
    except (DicomFilesError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path.name}: {exc}") from exc
    damaged = damaged_files_message(upload)
    if damaged:
        raise InputError(damaged)
    candidates, notes = group_series(upload.images)
    if not candidates:
        raise InputError(no_series_message(upload.skipped + notes))
    reports = [series_report(c) for c in candidates]
    usable = [r["key"] for r in reports if r["status"] == "ok"]
    report = {
        "input": path.name,
        "kind": "dicom",
        "files": upload.files,
        "skipped": upload.skipped + notes,
        "series": reports,
        "other_objects": [_other_object(ds) for ds in upload.others],
        "selected": usable[0] if len(usable) == 1 else None,
    }
    if patient_ids:
        report["patient_ids"] = {
            c.key: str(c.header.get("PatientID", "")).strip()
            for c in candidates
            if str(c.header.get("PatientID", "")).strip()
        }
    return report
