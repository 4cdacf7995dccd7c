"""DICOM exports of a finished result folder: the RTSTRUCT for the daily scan built from
the contours a physician kept after a propagation, and a corrected revision's RTSTRUCT
and DICOM SEG.

Each references the DICOM series of the job's scan (``scan_input`` and ``series_key``),
or for a NIfTI scan the CT series the engine wrote (``ct_dicom/`` of the result folder).
Every RTSTRUCT passes its round-trip check (``engine.io.rtstruct_check``) before it is
written. Files are renamed into place whole (``engine.results.ResultFolder``).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import ExportError, InputError
from engine.io.dicom_seg import DicomSegError, build_segmentation, write_segmentation
from engine.io.dicom_series import DicomSeries, read_series
from engine.io.dicom_write import DicomWriteError, labels_on_series_grid
from engine.io.reader import is_nifti
from engine.io.rtstruct import build_rtstruct, write_rtstruct
from engine.io.rtstruct_check import check_rtstruct
from engine.results import ResultFolder, RevisionExport
from engine.volume import LabelMap


@dataclass(frozen=True)
class Approval:
    """Who approved a structure set and when: DICOM Reviewer Name (PN) and Review Date/Time."""

    reviewer: str
    reviewed: datetime.datetime


def referenced_series(folder: ResultFolder, scan_input: Path, series_key: str, what: str) -> DicomSeries:
    """The DICOM series an RTSTRUCT of the job references: the uploaded series, or for a
    NIfTI scan the CT series the engine wrote (``ct_dicom/``).

    Raises:
        ExportError: a NIfTI scan without that series.
        InputError: the uploaded series can no longer be read.
    """
    if is_nifti(Path(scan_input)):
        if not (folder / folder.CT_DICOM).is_dir():
            raise ExportError(
                f"No RTSTRUCT can be written: the {what} is NIfTI and the engine wrote no DICOM series for it."
            )
        return read_series(folder / folder.CT_DICOM)
    return read_series(Path(scan_input), series_key or None)


def _on_series(labels: LabelMap, series: DicomSeries, message: str) -> LabelMap:
    try:
        return labels_on_series_grid(labels, series)
    except DicomWriteError:
        raise ExportError(message) from None


def write_final_rtstruct(
    folder: ResultFolder,
    daily_input: Path,
    series_key: str,
    choices: Mapping[str, str],
    model_name: str,
    weights_sha256: str = "",
) -> ResultFolder:
    """The RTSTRUCT for the daily scan with, per structure, the contours the physician kept:
    the propagated ones (``labels.nii.gz``) or the model's direct segmentation
    (``direct_labels.nii.gz``, same label values as ``structures.json``). Writes
    ``final/labels.nii.gz``, ``final/rtstruct.dcm`` (after its round-trip check,
    ``final/rtstruct_check.json``) and ``final/choices.json``; each ROI's description says
    which contours it holds. Where two kept structures overlap, the later one in
    ``structures.json`` has the voxel. Returns the ``final/`` folder.

    Raises:
        InputError: a "direct" choice without a direct segmentation.
        ExportError: no DICOM series to reference, or a structure whose contours fail
            the round-trip check.
    """
    structures = folder.structures()
    propagated = folder.read_labels()
    direct = folder.read_labels(folder.DIRECT_LABELS) if folder.has(folder.DIRECT_LABELS) else None
    merged = np.zeros(propagated.array.shape, dtype=np.uint8)
    kept = {}
    for s in structures:
        source = choices.get(s.name, "propagated")
        if source == "direct" and direct is None:
            raise InputError(f"{s.name}: this model made no direct segmentation of the daily scan.")
        chosen = direct if source == "direct" and direct is not None else propagated
        merged[chosen.array == s.label] = s.label
        kept[s.name] = source
    labels = LabelMap(merged, propagated.affine)
    series = referenced_series(folder, daily_input, series_key, "daily scan")
    on_series = _on_series(labels, series, "The propagated contours are not on the grid of the daily series.")
    ds = build_rtstruct(on_series, series, structures, f"adapt {model_name}", weights_sha256 or "none (registration)")
    what = {
        "propagated": f"propagated from the planning contours by {model_name}",
        "direct": f"direct segmentation of the daily scan by {model_name}",
    }
    for roi in ds.StructureSetROISequence:
        roi.ROIDescription = f"Delineo adaptive: {what[kept[roi.ROIName]]}, kept by the physician"
    final = folder.sub(folder.FINAL)
    final.path.mkdir(exist_ok=True)
    check_rtstruct(ds, on_series, series, structures, final / final.RTSTRUCT_CHECK)
    final.write_labels(labels)
    final.write_json(final.CHOICES, kept)
    write_rtstruct(ds, final / final.RTSTRUCT)
    return final


def _revision_on_series(revision: RevisionExport) -> tuple[DicomSeries, LabelMap]:
    series = referenced_series(revision.folder, revision.scan_input, revision.series_key, "scan")
    labels = revision.folder.read_labels(revision.labels_file)
    message = "The corrected contours are not on the grid of the scan's DICOM series."
    return series, _on_series(labels, series, message)


def write_revision_rtstruct(revision: RevisionExport, set_label: str, approval: Approval | None = None) -> None:
    """The RTSTRUCT of a revision of a job's label map (``revision.labels_file``) written
    as ``rtstruct.dcm`` in ``revision.out`` after its round-trip check
    (``rtstruct_check.json``), on the series the job's own RTSTRUCT references. Each
    structure of ``revision.edited`` has ROI Generation Algorithm MANUAL, the others
    AUTOMATIC; each ROI Description keeps the model and weights. Structure Set Label
    ``set_label`` (at most 16 characters); a new SOP Instance UID on every call. With an
    ``approval``, Approval Status APPROVED with Reviewer Name and Review Date/Time (PS3.3
    C.8.8.16); UNAPPROVED otherwise.

    Raises:
        ExportError: no DICOM series to reference, labels off its grid, or a structure
            whose contours fail the round-trip check.
    """
    model_name, weights_sha256 = revision.provenance
    structures, out = list(revision.structures), revision.out
    series, on_series = _revision_on_series(revision)
    ds = build_rtstruct(on_series, series, structures, model_name, weights_sha256 or "none")
    ds.StructureSetLabel = set_label[:16]
    ds.StructureSetName = ds.SeriesDescription = f"Delineo {model_name} {set_label}"[:64]
    for roi in ds.StructureSetROISequence:
        if roi.ROIName in revision.edited:
            roi.ROIGenerationAlgorithm = "MANUAL"
            roi.ROIGenerationDescription = "model contours corrected by hand in Delineo"
    if approval is not None:
        ds.ApprovalStatus = "APPROVED"
        ds.ReviewerName = approval.reviewer
        ds.ReviewDate = approval.reviewed.strftime("%Y%m%d")
        ds.ReviewTime = approval.reviewed.strftime("%H%M%S")
    out.path.mkdir(mode=0o750, parents=True, exist_ok=True)
    check_rtstruct(ds, on_series, series, structures, out / out.RTSTRUCT_CHECK)
    write_rtstruct(ds, out / out.RTSTRUCT)


def write_revision_seg(revision: RevisionExport) -> None:
    """The DICOM SEG of a revision of a job's label map (``revision.labels_file``) as
    ``seg.dcm`` in ``revision.out``, on the series the job's own SEG references. Segments
    of the ``revision.edited`` structures have Segment Algorithm Type SEMIAUTOMATIC (the
    model's output corrected by hand; the model stays named as the algorithm), the others
    AUTOMATIC.

    Raises:
        ExportError: no DICOM series to reference, or the series cannot be referenced by
            a SEG (no Study or Series Instance UID).
    """
    model_name, weights_sha256 = revision.provenance
    series, on_series = _revision_on_series(revision)
    try:
        seg = build_segmentation(on_series, series, list(revision.structures), model_name, weights_sha256 or "none")
    except DicomSegError as exc:
        raise ExportError(f"No DICOM SEG can be written: {exc}.") from None
    for segment in seg.SegmentSequence:
        if segment.SegmentLabel in revision.edited:
            segment.SegmentAlgorithmType = "SEMIAUTOMATIC"
    out = revision.out
    out.path.mkdir(mode=0o750, parents=True, exist_ok=True)
    write_segmentation(seg, out / out.SEG)
