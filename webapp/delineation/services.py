"""The service layer: the only module of the web application that calls the engine.

It also turns job outputs into what the pages need (slices for the viewer, a zip of
the structure masks). The engine is imported lazily so the web process starts without
PyTorch and a missing or broken engine fails one job with a message, not the server.

Display convention of the viewer (``slice_of``)
-----------------------------------------------
``image.nii.gz`` is RAS+ with any voxel axis order, so volumes are first reoriented to
the closest canonical orientation (nibabel ``as_closest_canonical``: array axes point
to patient Right, Anterior, Superior; no resampling, only flips and axis swaps). Slices
are then shown in the radiological convention:

* axial: viewed from the feet; patient's right on the image left, anterior at the top;
* coronal: viewed from the front; patient's right on the image left, superior at the top;
* sagittal: viewed from the patient's left; anterior on the image left, superior at the top.

Rows run top to bottom and columns left to right; ``pixel_spacing_mm`` is (row, column)
spacing so the page can draw pixels with their physical aspect ratio.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np

from engine.io.atomic import write_atomically  # standard library only: no PyTorch in the web process
from webapp.delineation.redact import traceback_without_messages

logger = logging.getLogger(__name__)

PLANES = ("axial", "coronal", "sagittal")
# Outputs a job may or may not have: (download key, file in the result folder, URL name).
OPTIONAL_OUTPUTS = (
    ("rtstruct", "rtstruct.dcm", "api-job-rtstruct"),
    ("seg", "seg.dcm", "api-job-seg"),
    ("ct_dicom", "ct_dicom.zip", "api-job-ct-dicom"),
    ("audit", "audit.json", "api-job-audit-json"),
    ("propagation", "report.json", "api-job-propagation-json"),
    ("ddf", "ddf.nii.gz", "api-job-ddf"),
)
# What a contour audit's ``audit.json`` may show on the pages and in the API (not the
# upload's file name, which may name the patient).
AUDIT_FIELDS = ("model_name", "qam_threshold", "structures", "notes")
AUDIT_NEEDS_CRITIC = (
    "An audit needs a model that ships a contour-quality critic (QAM), such as hn-rt; "
    "no model on this server has one yet."
)
_VIEWER_DIR = "viewer"
# What a propagation's ``report.json`` may show on the pages and in the API.
PROPAGATION_FIELDS = ("model", "structures", "folding_percent", "notes")
# The RTSTRUCT for the daily scan built from the physician's choices, and its companions.
FINAL_DIR = "final"
FINAL_RTSTRUCT = f"{FINAL_DIR}/rtstruct.dcm"
CHOICES = ("propagated", "direct")
# TG-263 target-volume prefixes, for the RT ROI Interpreted Type of the final RTSTRUCT.
_TARGET_PREFIXES = ("PTV", "CTV", "GTV", "ITV")


class DelineationError(Exception):
    """A job cannot run; ``message`` is meant for the physician."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PreflightError(DelineationError):
    """An upload the engine cannot read as a volume."""


@dataclass
class EngineResult:
    structures: list[dict]
    timings_s: dict[str, float]
    rtstruct: Path | None
    input_kind: str
    model_name: str
    weights_sha256: str
    rtstruct_roundtrip: dict[str, float] = field(default_factory=dict)
    seg: Path | None = None  # DICOM SEG of the structures
    ct_dicom_zip: Path | None = None  # NIfTI input as a DICOM CT series, for seg/rtstruct
    notes: list[str] = field(default_factory=list)  # outputs not written, and why
    domain: dict = field(default_factory=dict)  # engine.infer.domain.check_domain, domain.json


@dataclass
class AuditEngineResult:
    """A contour audit (``engine.infer.audit.audit_file``) as the job records it."""

    structures: list[dict]  # the model's delineation, as structures.json
    audit: list[dict]  # one entry per audited ROI, worst Dice first (StructureAudit)
    qam_threshold: float
    timings_s: dict[str, float]
    model_name: str
    weights_sha256: str
    notes: list[str] = field(default_factory=list)  # ROIs not audited, and why


@dataclass
class PropagationEngineResult:
    """A contour propagation (``engine.infer.propagate.propagate_files``) as the job records it."""

    structures: list[dict]  # the propagated contours on the daily scan, as structures.json
    report: dict  # report.json: per-structure agreement with the direct segmentation, folding
    timings_s: dict[str, float]
    model_name: str
    weights_sha256: str  # empty for a classical registration (no weights)
    input_kind: str  # of the daily scan: "dicom" or "nifti"
    notes: list[str] = field(default_factory=list)


# --- Engine calls ---------------------------------------------------------------------


def available_models() -> list[str]:
    """Names of the shipped models (``engine.models.registry.available_models``)."""
    try:
        from engine.models.registry import available_models as engine_models
    except ImportError:
        logger.exception("engine model registry unavailable")
        return []
    return list(engine_models())


def model_cards() -> list[dict]:
    """For each shipped model: its name and structures (label, name, colour) from its card,
    ``audit``: whether it ships a contour-quality critic (card key ``qam``), so it can
    audit a structure set (``engine.infer.audit.load_critic``), and ``domain``: the scans
    it was trained for (card key ``domain``, ``engine.infer.domain``; absent if none)."""
    cards = []
    for name in available_models():
        entry: dict = {"name": name, "structures": [], "audit": False}
        try:
            from engine.models.registry import WEIGHTS_DIR

            card = json.loads((Path(WEIGHTS_DIR) / f"{name}.json").read_text())
            entry["structures"] = [
                {"label": s["label"], "name": s["name"], "color": s.get("color")} for s in card.get("structures", [])
            ]
            for key in ("description", "version", "modality"):
                if isinstance(card.get(key), str):
                    entry[key] = card[key]
            entry["audit"] = bool(card.get("qam"))
            if isinstance(card.get("domain"), dict):
                entry["domain"] = card["domain"]
        except (ImportError, OSError, ValueError, KeyError, TypeError):
            logger.warning("could not read the card of model %s", name)
        cards.append(entry)
    return cards


def domain_notes(report: dict) -> list[dict]:
    """Before a job is queued: for each usable series of a pre-flight ``report`` and each
    model with a domain, what its headers already say against that domain
    (``engine.infer.domain.preflight_findings``): ``{"series", "model", "reasons"}``."""
    from engine.infer.domain import preflight_findings

    notes = []
    for card in model_cards():
        if "domain" not in card:
            continue
        for series in report.get("series", []):
            if series.get("status") == "ok":
                reasons = preflight_findings(series, card["domain"], card["name"])
                if reasons:
                    notes.append({"series": series.get("key") or "", "model": card["name"], "reasons": reasons})
    return notes


def audit_models() -> list[str]:
    """Names of the shipped models that can audit contours (see ``model_cards``)."""
    return [card["name"] for card in model_cards() if card.get("audit")]


def preflight(path: Path, keep_refused: bool = False) -> dict | None:
    """The engine's pre-flight report of an upload (``engine.io.preflight.inspect_input``).

    Returns the report (series with geometry and status, skipped files, other DICOM
    objects, ``selected``, and ``patient_ids``: the DICOM Patient ID of each series, to be
    taken out before the report is stored, see ``dicom_patient_id``), or None when the
    engine is not installed. Raises :class:`PreflightError` when nothing in the upload can
    be delineated; with ``keep_refused`` only when nothing can be read, and a report whose
    every series is refused gets ``refused``, the reasons in a sentence.
    """
    try:
        from engine.io.preflight import inspect_input
        from engine.io.reader import InputError
    except ImportError:
        logger.warning("engine.io.preflight unavailable: upload accepted without pre-flight check")
        return None
    try:
        report = inspect_input(path, patient_ids=True)
    except InputError as exc:
        raise PreflightError(str(exc)) from None
    except Exception as exc:  # a reader bug must not look like a server crash to the user
        # Not the path nor the message: the file's name may be the patient's.
        logger.error("pre-flight read of an upload failed:\n%s", traceback_without_messages(exc))
        raise PreflightError(f"The upload could not be read as an image ({type(exc).__name__}: {exc}).") from None
    refused = [s for s in report["series"] if s["status"] != "ok"]
    if len(refused) == len(report["series"]) and keep_refused:
        reasons = "; ".join(s["reason"] for s in refused) or "no image series"
        report["refused"] = f"Nothing in it can be delineated: {reasons}"
    elif len(refused) == len(report["series"]):
        if len(refused) == 1:
            raise PreflightError(refused[0]["reason"])
        reasons = "; ".join(f"{s['key']}: {s['reason']}" for s in refused)
        raise PreflightError(f"none of the {len(refused)} image series can be used ({reasons})")
    return report


def dicom_patient_id(report: dict | None, patient_ids: dict[str, str]) -> str:
    """The Patient ID of an upload: that of the series ``segment`` would use, or the one
    Patient ID all usable series share; "" when there is none or they differ."""
    if not report:
        return ""
    selected = report.get("selected")
    if selected and patient_ids.get(selected):
        return patient_ids[selected]
    found = {patient_ids[key] for key in usable_series(report) if patient_ids.get(key)}
    return found.pop() if len(found) == 1 else ""


class DeidentificationFailed(Exception):
    """An upload whose DICOM files could not be de-identified; ``message`` is for the physician."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def structure_names() -> list[str]:
    """The structure names (TG-263 and the training data's spelling) of the shipped models'
    cards: ROI names that de-identification keeps (``engine.io.deidentify``)."""
    names: set[str] = set()
    try:
        from engine.models.registry import WEIGHTS_DIR
    except ImportError:
        return []
    for name in available_models():
        try:
            card = json.loads((Path(WEIGHTS_DIR) / f"{name}.json").read_text())
            for s in card.get("structures", []):
                names.update(str(s[key]) for key in ("name", "source") if s.get(key))
        except (OSError, ValueError, TypeError, AttributeError):
            logger.warning("could not read the card of model %s", name)
    return sorted(names)


def deidentify(source: Path, out_dir: Path) -> dict:
    """De-identify the DICOM files of an upload into ``out_dir`` (``engine.io.deidentify``:
    DICOM PS3.15 Annex E Basic Profile; the shipped models' structure names are kept as
    ROI names, Clean Descriptors Option).

    Returns the record kept on the scan (``Scan.deidentification``): profile, codes,
    method, counts of files written and dropped and of UIDs replaced, notes.

    Raises:
        DeidentificationFailed: a file could not be de-identified, or the upload is unsafe.
    """
    try:
        from engine.io.deidentify import TABLE_EDITION, DeidentificationError, deidentify_upload
        from engine.io.dicom_files import DicomFilesError
    except ImportError as exc:
        raise DeidentificationFailed(f"De-identification is not available on this server ({exc}).") from None
    try:
        result = deidentify_upload(source, out_dir, keep_roi_names=structure_names())
    except (DeidentificationError, DicomFilesError) as exc:
        raise DeidentificationFailed(str(exc)) from None
    return {
        "profile": result.profile,
        "method": result.method,
        "codes": [{"value": v, "scheme": "DCM", "meaning": m} for v, m in result.codes],
        "table": f"DICOM PS3.15 {TABLE_EDITION} Table E.1-1",
        "files": len(result.files),
        "dropped_files": result.dropped,
        "uids_replaced": result.uids_replaced,
        "notes": result.notes,
    }


def unreadable_nifti_reason(path: Path, exc: Exception) -> str:
    """Why nibabel raised ``exc`` reading ``path``, in words (``engine.io.nifti.why_unreadable``)."""
    try:
        from engine.io.nifti import why_unreadable
    except ImportError:
        return "it is not a NIfTI file, or it is damaged"
    return why_unreadable(exc, Path(path))


def usable_series(report: dict | None) -> list[str]:
    """Keys of the series of a pre-flight report that can be delineated."""
    if not report:
        return []
    return [s["key"] for s in report.get("series", []) if s.get("status") == "ok" and s.get("key")]


def structure_sets(report: dict | None) -> list[dict]:
    """The RTSTRUCT objects a pre-flight report lists among the upload's other objects."""
    if not report:
        return []
    return [o for o in report.get("other_objects") or [] if isinstance(o, dict) and o.get("modality") == "RTSTRUCT"]


def run_segmentation(
    input_path: Path,
    model_name: str,
    out_dir: Path,
    progress: Callable[[str, int], None] | None = None,
    series: str | None = None,
) -> EngineResult:
    """Run ``engine.infer.segment.segment_file``; engine input errors become DelineationError."""
    try:
        from engine.infer.segment import segment_file
        from engine.io.reader import InputError
        from engine.io.rtstruct_check import RTStructExportError
        from engine.models.registry import UnknownModelError
    except ImportError as exc:
        raise DelineationError(f"The delineation engine is not available on this worker ({exc}).") from exc
    try:
        result = segment_file(Path(input_path), model_name, Path(out_dir), progress=progress, series=series)
    except InputError as exc:
        raise DelineationError(str(exc)) from None
    except UnknownModelError as exc:
        raise DelineationError(f"Unknown model: {exc}") from None
    except RTStructExportError as exc:
        raise DelineationError(str(exc)) from None
    return EngineResult(
        structures=[dict(s) for s in result.structures],
        timings_s={k: float(v) for k, v in dict(result.timings_s).items()},
        rtstruct=Path(result.rtstruct) if result.rtstruct else None,
        input_kind=str(result.input_kind),
        model_name=str(result.model_name),
        weights_sha256=str(result.weights_sha256),
        rtstruct_roundtrip={k: float(v) for k, v in result.rtstruct_roundtrip.items()},
        seg=Path(result.seg) if result.seg else None,
        ct_dicom_zip=Path(result.ct_dicom_zip) if result.ct_dicom_zip else None,
        notes=[str(n) for n in result.notes],
        domain=dict(result.domain or {}),
    )


def run_audit(
    input_path: Path,
    model_name: str,
    out_dir: Path,
    progress: Callable[[str, int], None] | None = None,
    series: str | None = None,
) -> AuditEngineResult:
    """Run ``engine.infer.audit.audit_file`` on the structure set of the upload; engine
    errors (no structure set, no structure the model knows, no critic, NIfTI input, an
    unreadable RTSTRUCT, an unknown model) become DelineationError."""
    try:
        from engine.infer.audit import AuditError, audit_file
        from engine.io.reader import InputError
        from engine.io.rtstruct_import import RTStructImportError
        from engine.models.registry import UnknownModelError
    except ImportError as exc:
        raise DelineationError(f"The delineation engine is not available on this worker ({exc}).") from exc
    try:
        result = audit_file(Path(input_path), model_name, Path(out_dir), progress=progress, series=series)
    except AuditError as exc:
        raise DelineationError(f"The contours cannot be audited: {exc}.") from None
    except RTStructImportError as exc:
        raise DelineationError(f"The structure set (RTSTRUCT) could not be read: {exc}") from None
    except InputError as exc:
        raise DelineationError(str(exc)) from None
    except UnknownModelError as exc:
        raise DelineationError(f"Unknown model: {exc}") from None
    structures = json.loads((Path(out_dir) / "structures.json").read_text())
    return AuditEngineResult(
        structures=[dict(s) for s in structures],
        audit=[dataclasses.asdict(a) for a in result.structures],
        qam_threshold=float(result.qam_threshold),
        timings_s={k: float(v) for k, v in dict(result.timings_s).items()},
        model_name=str(result.model_name),
        weights_sha256=str(result.weights_sha256),
        notes=[str(n) for n in result.notes],
    )


# Preselected in the Adapt form: the most accurate method on the pairs of docs/registration.md
# (the shipped joint models do not yet improve on their affine pre-alignment).
RECOMMENDED_PROPAGATION_MODEL = "elastix-bspline"


def propagation_models() -> list[str]:
    """Names of the propagation methods this server offers
    (``engine.infer.propagate.PROPAGATION_MODELS``: classical registrations and joint models)."""
    try:
        from engine.infer.propagate import PROPAGATION_MODELS
    except ImportError:
        logger.warning("engine.infer.propagate unavailable: no propagation model offered")
        return []
    return list(PROPAGATION_MODELS())


def planning_rtstruct(planning_input: Path, sop_instance_uid: str, destination: Path) -> Path:
    """Copy the RTSTRUCT with ``sop_instance_uid`` out of the planning upload (folder or zip)
    into ``destination``, for the engine to read as the planning contours.

    Raises:
        DelineationError: the upload cannot be read, or holds no RTSTRUCT with that UID.
    """
    from engine.io.dicom_files import DicomFilesError, read_upload

    try:
        others = read_upload(Path(planning_input)).others
    except (DicomFilesError, zipfile.BadZipFile, OSError) as exc:
        raise DelineationError(f"The planning upload could not be read ({exc}).") from None
    for ds in others:
        if str(ds.get("Modality", "")) == "RTSTRUCT" and str(ds.get("SOPInstanceUID", "")) == sop_instance_uid:
            ds.save_as(destination, enforce_file_format=True)
            return Path(destination)
    raise DelineationError(
        "The planning upload no longer holds the chosen structure set (RTSTRUCT); start a new propagation."
    )


def run_propagation(
    fixed: Path,
    moving: Path,
    contours: Path,
    model_name: str,
    out_dir: Path,
    progress: Callable[[str, int], None] | None = None,
) -> PropagationEngineResult:
    """Run ``engine.infer.propagate.propagate_files``: the ``contours`` of the ``moving``
    (planning) scan, an RTSTRUCT file or a delineation's result folder (labels.nii.gz and
    structures.json), propagated onto the ``fixed`` (daily) scan into ``out_dir``
    (ddf.nii.gz, labels.nii.gz, structures.json, structures/, direct_labels.nii.gz when the
    model segments, rtstruct.dcm, report.json). Also writes ``image.nii.gz`` (the daily
    scan, int16 HU) for the viewer when the engine did not.

    Engine errors meant for the user (unreadable scans or contours, an unknown model, an
    RTSTRUCT failing its round-trip check) become DelineationError.
    """
    try:
        from engine.infer.elastix import ElastixError
        from engine.infer.propagate import propagate_files
        from engine.io.nifti import write_nifti
        from engine.io.reader import is_nifti, read_input
        from engine.io.rtstruct_check import RTStructExportError
        from engine.volume import Volume
    except ImportError as exc:
        raise DelineationError(f"The contour propagation engine is not available on this worker ({exc}).") from exc
    out_dir = Path(out_dir)
    try:
        report = propagate_files(Path(fixed), Path(moving), Path(contours), model_name, out_dir, progress)
        if not (out_dir / "image.nii.gz").exists():
            volume, _ = read_input(Path(fixed))
            image = np.clip(np.rint(volume.array), -32768, 32767).astype(np.int16)
            write_nifti(Volume(image, volume.affine), out_dir / "image.nii.gz")
    except RTStructExportError as exc:
        raise DelineationError(str(exc)) from None
    except ElastixError as exc:
        raise DelineationError(f"The registration failed: {exc}") from None
    except ValueError as exc:  # the engine's input errors (InputError, RTStructImportError, UnknownModelError, ...)
        raise DelineationError(f"The contours could not be propagated: {exc}") from None
    structures = json.loads((out_dir / "structures.json").read_text())
    return PropagationEngineResult(
        structures=[dict(s) for s in structures],
        report=report,
        timings_s={k: float(v) for k, v in dict(report.get("timings") or {}).items()},
        model_name=str(report.get("model") or model_name),
        weights_sha256=str(report.get("sha256") or ""),
        input_kind="nifti" if is_nifti(Path(fixed)) else "dicom",
        notes=[str(n) for n in report.get("notes") or []],
    )


def _interpreted_type(name: str) -> str:
    return next((p for p in _TARGET_PREFIXES if name.upper().startswith(p)), "ORGAN")


def _referenced_series(result_dir: Path, scan_input: Path, series_key: str, what: str):
    """The DICOM series an RTSTRUCT of a job references: the uploaded series, or for a NIfTI
    scan the CT series the engine wrote (``ct_dicom/``).

    Raises:
        DelineationError: a NIfTI scan without that series.
    """
    from engine.io.dicom_series import read_series
    from engine.io.reader import is_nifti

    if is_nifti(scan_input):
        if not (result_dir / "ct_dicom").is_dir():
            raise DelineationError(
                f"No RTSTRUCT can be written: the {what} is NIfTI and the engine wrote no DICOM series for it."
            )
        return read_series(result_dir / "ct_dicom")
    return read_series(scan_input, series_key or None)


def write_final_rtstruct(
    result_dir: Path,
    daily_input: Path,
    series_key: str,
    choices: dict[str, str],
    model_name: str,
    weights_sha256: str = "",
) -> dict[str, str]:
    """The RTSTRUCT for the daily scan with, per structure, the contours the physician kept:
    the propagated ones (``labels.nii.gz``) or the model's direct segmentation
    (``direct_labels.nii.gz``, same label values as ``structures.json``). Writes
    ``final/labels.nii.gz``, ``final/rtstruct.dcm`` (after its round-trip check,
    ``final/rtstruct_check.json``) and ``final/choices.json``, each renamed into place; each
    ROI's description says which contours it holds. Where two kept structures overlap, the
    later one in ``structures.json`` has the voxel. Returns the SHA-256 of those files by
    path relative to ``result_dir``.

    The RTSTRUCT references the daily DICOM series (``daily_input``, ``series_key``), or for a
    NIfTI daily scan the CT series the engine wrote (``ct_dicom/``).

    Raises:
        DelineationError: no DICOM series to reference, a "direct" choice without a direct
            segmentation, or a structure whose contours fail the round-trip check.
    """
    from engine.io.dicom_write import DicomWriteError, labels_on_series_grid
    from engine.io.nifti import read_labels, write_nifti
    from engine.io.rtstruct import build_rtstruct, write_rtstruct
    from engine.io.rtstruct_check import RTStructExportError, check_rtstruct
    from engine.structure import Structure
    from engine.volume import LabelMap

    result_dir = Path(result_dir)
    structures = json.loads((result_dir / "structures.json").read_text())
    propagated = read_labels(result_dir / "labels.nii.gz")
    direct_path = result_dir / "direct_labels.nii.gz"
    direct = read_labels(direct_path) if direct_path.exists() else None
    merged = np.zeros(propagated.array.shape, dtype=np.uint8)
    kept = {}
    for s in structures:
        source = choices.get(s["name"], "propagated")
        if source == "direct" and direct is None:
            raise DelineationError(f"{s['name']}: this model made no direct segmentation of the daily scan.")
        merged[(direct if source == "direct" else propagated).array == s["label"]] = s["label"]
        kept[s["name"]] = source
    labels = LabelMap(merged, propagated.affine)
    series = _referenced_series(result_dir, Path(daily_input), series_key, "daily scan")
    try:
        on_series = labels_on_series_grid(labels, series)
    except DicomWriteError:
        raise DelineationError("The propagated contours are not on the grid of the daily series.") from None
    table = [Structure(s["label"], s["name"], tuple(s["color"]), _interpreted_type(s["name"])) for s in structures]
    ds = build_rtstruct(on_series, series, table, f"adapt {model_name}", weights_sha256 or "none (registration)")
    what = {
        "propagated": f"propagated from the planning contours by {model_name}",
        "direct": f"direct segmentation of the daily scan by {model_name}",
    }
    for roi in ds.StructureSetROISequence:
        roi.ROIDescription = f"Delineo adaptive: {what[kept[roi.ROIName]]}, kept by the physician"
    out = result_dir / FINAL_DIR
    out.mkdir(exist_ok=True)
    try:
        check_rtstruct(ds, on_series, series, table, out / "rtstruct_check.json")
    except RTStructExportError as exc:
        raise DelineationError(str(exc)) from None
    write_nifti(labels, out / "labels.nii.gz")
    text = json.dumps(kept, indent=1)
    write_atomically(out / "choices.json", lambda tmp: Path(tmp).write_text(text))
    write_rtstruct(ds, out / "rtstruct.dcm")
    return {f"{FINAL_DIR}/{name}": digest for name, digest in output_checksums(out).items()}


@dataclass(frozen=True)
class Approval:
    """Who approved a structure set and when: DICOM Reviewer Name (PN) and Review Date/Time."""

    reviewer: str
    reviewed: datetime.datetime


def write_revision_rtstruct(
    result_dir: Path,
    scan_input: Path,
    series_key: str,
    labels_file: str,
    out_folder: str,
    structures: list[dict],
    provenance: tuple[str, str],
    set_label: str,
    edited: Collection[str],
    approval: Approval | None,
) -> dict[str, str]:
    """The RTSTRUCT of a revision of a job's label map: ``labels_file`` (path relative to
    ``result_dir``, uint8 on the scan's grid) written as ``<out_folder>/rtstruct.dcm`` after
    its round-trip check (``<out_folder>/rtstruct_check.json``), on the series the job's
    own RTSTRUCT references. ``structures``: as structures.json; ``provenance``: (model
    name, weights SHA-256). Each structure of ``edited`` has ROI Generation Algorithm
    MANUAL, the others AUTOMATIC; each ROI Description keeps the model and weights.
    Structure Set Label ``set_label`` (at most 16 characters); a new SOP Instance UID on
    every call. With an ``approval``, Approval Status APPROVED with Reviewer Name and
    Review Date/Time (PS3.3 C.8.8.16); UNAPPROVED otherwise. Returns the SHA-256 of the
    two files by path relative to ``result_dir``.

    Raises:
        DelineationError: no DICOM series to reference, labels off its grid, or a structure
            whose contours fail the round-trip check.
    """
    from engine.io.rtstruct import build_rtstruct, write_rtstruct
    from engine.io.rtstruct_check import RTStructExportError, check_rtstruct

    result_dir = Path(result_dir)
    model_name, weights_sha256 = provenance
    series, on_series, table = _revision_on_series(result_dir, scan_input, series_key, labels_file, structures)
    ds = build_rtstruct(on_series, series, table, model_name, weights_sha256 or "none")
    ds.StructureSetLabel = set_label[:16]
    ds.StructureSetName = ds.SeriesDescription = f"Delineo {model_name} {set_label}"[:64]
    for roi in ds.StructureSetROISequence:
        if roi.ROIName in edited:
            roi.ROIGenerationAlgorithm = "MANUAL"
            roi.ROIGenerationDescription = "model contours corrected by hand in Delineo"
    if approval is not None:
        ds.ApprovalStatus = "APPROVED"
        ds.ReviewerName = approval.reviewer
        ds.ReviewDate = approval.reviewed.strftime("%Y%m%d")
        ds.ReviewTime = approval.reviewed.strftime("%H%M%S")
    out = result_dir / out_folder
    os.makedirs(out, mode=0o750, exist_ok=True)
    try:
        check_rtstruct(ds, on_series, series, table, out / "rtstruct_check.json")
    except RTStructExportError as exc:
        raise DelineationError(str(exc)) from None
    write_rtstruct(ds, out / "rtstruct.dcm")
    return _digests(result_dir, out_folder, ("rtstruct.dcm", "rtstruct_check.json"))


def _digests(result_dir: Path, folder: str, names: tuple[str, ...]) -> dict[str, str]:
    digests = {}
    for name in names:
        with open(result_dir / folder / name, "rb") as handle:
            digests[f"{folder}/{name}"] = sha256_of(handle)
    return digests


def _revision_on_series(result_dir: Path, scan_input: Path, series_key: str, labels_file: str, structures: list[dict]):
    """(series, the label map ``labels_file`` on its grid, the engine's structure table)."""
    from engine.io.dicom_write import DicomWriteError, labels_on_series_grid
    from engine.io.nifti import read_labels
    from engine.structure import Structure

    series = _referenced_series(result_dir, Path(scan_input), series_key, "scan")
    try:
        on_series = labels_on_series_grid(read_labels(result_dir / labels_file), series)
    except DicomWriteError:
        raise DelineationError("The corrected contours are not on the grid of the scan's DICOM series.") from None
    table = [Structure(s["label"], s["name"], tuple(s["color"]), _interpreted_type(s["name"])) for s in structures]
    return series, on_series, table


def write_revision_seg(
    result_dir: Path,
    scan_input: Path,
    series_key: str,
    labels_file: str,
    out_folder: str,
    structures: list[dict],
    provenance: tuple[str, str],
    edited: Collection[str],
) -> dict[str, str]:
    """The DICOM SEG of a revision of a job's label map (``labels_file``, relative to
    ``result_dir``) as ``<out_folder>/seg.dcm``, on the series the job's own SEG references.
    Segments of the ``edited`` structures have Segment Algorithm Type SEMIAUTOMATIC (the
    model's output corrected by hand; the model stays named as the algorithm), the others
    AUTOMATIC. Returns its SHA-256 by path relative to ``result_dir``.

    Raises:
        DelineationError: no DICOM series to reference, or the series cannot be referenced
            by a SEG (no Study or Series Instance UID).
    """
    from engine.io.dicom_seg import DicomSegError, build_segmentation, write_segmentation

    result_dir = Path(result_dir)
    model_name, weights_sha256 = provenance
    series, on_series, table = _revision_on_series(result_dir, scan_input, series_key, labels_file, structures)
    try:
        seg = build_segmentation(on_series, series, table, model_name, weights_sha256 or "none")
    except DicomSegError as exc:
        raise DelineationError(f"No DICOM SEG can be written: {exc}.") from None
    for segment in seg.SegmentSequence:
        if segment.SegmentLabel in edited:
            segment.SegmentAlgorithmType = "SEMIAUTOMATIC"
    os.makedirs(result_dir / out_folder, mode=0o750, exist_ok=True)
    write_segmentation(seg, result_dir / out_folder / "seg.dcm")
    return _digests(result_dir, out_folder, ("seg.dcm",))


# --- Outputs for the pages ------------------------------------------------------------


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array))

    write_atomically(path, write)


def prepare_viewer(result_dir: Path) -> dict:
    """Write canonical (RAS) copies of image and labels as .npy for fast slicing, and of
    ``direct_labels.nii.gz`` where a propagation has one (the model's own segmentation).

    Returns the viewer metadata (shape, spacing, per-structure centre slices, ``direct``),
    also written to ``viewer/meta.json``. Safe to run twice (atomic writes).
    """
    result_dir = Path(result_dir)
    out = result_dir / _VIEWER_DIR
    out.mkdir(exist_ok=True)
    image = nib.as_closest_canonical(nib.load(result_dir / "image.nii.gz"))
    labels = nib.as_closest_canonical(nib.load(result_dir / "labels.nii.gz"))
    if image.shape[:3] != labels.shape[:3] or not np.allclose(image.affine, labels.affine, atol=1e-3):
        raise DelineationError("The label map does not match the image grid.")
    image_array = np.asarray(image.dataobj)
    if image_array.dtype != np.int16:
        image_array = np.clip(np.rint(image_array), -32768, 32767).astype(np.int16)
    label_array = np.asarray(labels.dataobj).astype(np.uint8)
    direct_array = None
    if (result_dir / "direct_labels.nii.gz").exists():
        direct = nib.as_closest_canonical(nib.load(result_dir / "direct_labels.nii.gz"))
        if direct.shape[:3] != labels.shape[:3] or not np.allclose(direct.affine, labels.affine, atol=1e-3):
            raise DelineationError("The direct segmentation does not match the image grid.")
        direct_array = np.asarray(direct.dataobj).astype(np.uint8)
    centres: dict[str, list[int]] = {}
    for value in np.unique(label_array):
        if value == 0:
            continue
        idx = np.argwhere(label_array == value)
        centres[str(int(value))] = [int(round(c)) for c in idx.mean(axis=0)]
    spacing = [float(s) for s in image.header.get_zooms()[:3]]
    meta = {
        "shape": [int(n) for n in image.shape[:3]],
        "spacing_mm": spacing,
        "affine": np.asarray(image.affine).round(6).tolist(),
        "centres": centres,
        "convention": "RAS canonical; axial/coronal: patient right on image left; sagittal: anterior on image left",
        "direct": direct_array is not None,
    }
    _atomic_save_npy(out / "image.npy", image_array)
    _atomic_save_npy(out / "labels.npy", label_array)
    if direct_array is not None:
        _atomic_save_npy(out / "direct.npy", direct_array)
    text = json.dumps(meta)
    write_atomically(out / "meta.json", lambda tmp: Path(tmp).write_text(text))
    return meta


@lru_cache(maxsize=8)
def _load_viewer(result_dir: str, mtime_ns: int) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray | None]:
    base = Path(result_dir) / _VIEWER_DIR
    meta = json.loads((base / "meta.json").read_text())
    direct = np.load(base / "direct.npy", mmap_mode="r") if meta.get("direct") else None
    return meta, np.load(base / "image.npy", mmap_mode="r"), np.load(base / "labels.npy", mmap_mode="r"), direct


def viewer_volume(result_dir: Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray | None]:
    """(meta, image, labels, direct labels or None) in canonical RAS, memory-mapped;
    prepared on first use."""
    meta_path = Path(result_dir) / _VIEWER_DIR / "meta.json"
    if not meta_path.exists():
        prepare_viewer(Path(result_dir))
    return _load_viewer(str(result_dir), meta_path.stat().st_mtime_ns)


def plane_count(meta: dict, plane: str) -> int:
    nx, ny, nz = meta["shape"]
    return {"axial": nz, "coronal": ny, "sagittal": nx}[plane]


def oriented_slice(volume: np.ndarray, plane: str, index: int) -> np.ndarray:
    """The displayed 2D slice (rows top to bottom, columns left to right) of a canonical
    (X, Y, Z) volume; see module doc. A view: writing to it writes ``volume``."""
    if plane == "axial":  # rows A->P, columns R->L
        return volume[::-1, ::-1, index].T
    if plane == "coronal":  # rows S->I, columns R->L
        return volume[::-1, index, ::-1].T
    return volume[index, ::-1, ::-1].T  # sagittal: rows S->I, columns A->P


_ORIENTATION_LABELS = {
    "axial": {"top": "A", "bottom": "P", "left": "R", "right": "L"},
    "coronal": {"top": "S", "bottom": "I", "left": "R", "right": "L"},
    "sagittal": {"top": "S", "bottom": "I", "left": "A", "right": "P"},
}


def _encode(array: np.ndarray, dtype: str) -> dict:
    data = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<"))
    return {
        "dtype": dtype,
        "byte_order": "little",
        "encoding": "base64",
        "data": base64.b64encode(data.tobytes()).decode(),
    }


def slice_of(result_dir: Path, plane: str, index: int | None, labels: np.ndarray | None = None) -> dict:
    """One displayed slice of the CT (int16 HU) and the label map (uint8), and for a
    propagation with a direct segmentation ``direct_labels`` (uint8, same label values)
    with ``direct_present``; see module doc. ``labels``: a revision's label map (canonical
    X, Y, Z) instead of the model's.

    ``index`` counts along the canonical axis of the plane's normal: axial 0 = most
    inferior, coronal 0 = most posterior, sagittal 0 = patient's leftmost. None gives
    the slice through the centre of all structures (or the middle slice).

    Raises:
        ValueError: unknown plane or index out of range (message for the user).
    """
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {', '.join(PLANES)}")
    meta, image, model_labels, direct = viewer_volume(result_dir)
    labels = model_labels if labels is None else labels
    count = plane_count(meta, plane)
    axis = {"sagittal": 0, "coronal": 1, "axial": 2}[plane]
    if index is None:
        centres = list(meta["centres"].values())
        index = int(round(np.mean([c[axis] for c in centres]))) if centres else count // 2
    if not 0 <= index < count:
        raise ValueError(f"index must be between 0 and {count - 1} for the {plane} plane")
    sx, sy, sz = meta["spacing_mm"]
    row_col = {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[plane]
    ct = oriented_slice(image, plane, index)
    lab = oriented_slice(labels, plane, index)
    voxel = [0, 0, 0]
    voxel[axis] = index
    position = (np.asarray(meta["affine"]) @ np.array([*voxel, 1.0]))[axis]
    result = {
        "plane": plane,
        "index": index,
        "count": count,
        "rows": int(ct.shape[0]),
        "columns": int(ct.shape[1]),
        "pixel_spacing_mm": [float(row_col[0]), float(row_col[1])],
        "slice_spacing_mm": float(meta["spacing_mm"][axis]),
        "position_mm": round(float(position), 3),
        "volume_shape": meta["shape"],
        "orientation": _ORIENTATION_LABELS[plane],
        "labels_present": sorted(int(v) for v in np.unique(lab) if v),
        # Voxel index (canonical sagittal, coronal, axial) of each structure's centre.
        "centres": meta["centres"],
        "image": _encode(ct, "int16"),
        "labels": _encode(lab, "uint8"),
    }
    if direct is not None:  # a propagation's direct segmentation of the daily scan, same label values
        direct_slice = oriented_slice(direct, plane, index)
        result["direct_labels"] = _encode(direct_slice, "uint8")
        result["direct_present"] = sorted(int(v) for v in np.unique(direct_slice) if v)
    return result


# Date of every zip entry, so that the same files always give the same zip (and checksum).
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def structures_zip(result_dir: Path, destination: Path) -> Path:
    """Zip ``structures/*.nii.gz`` and ``structures.json`` into ``destination``: written
    under a temporary name and renamed into place; the same files give the same bytes."""
    result_dir = Path(result_dir)
    members = [(mask, f"structures/{mask.name}") for mask in sorted((result_dir / "structures").glob("*.nii.gz"))]
    if (result_dir / "structures.json").exists():
        members.append((result_dir / "structures.json", "structures.json"))

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for source, name in members:
                info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
                info.external_attr = 0o644 << 16
                with open(source, "rb") as src, archive.open(info, "w") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)

    return write_atomically(destination, write)


def write_revision_structures(
    result_dir: Path, labels_file: str, out_folder: str, structures: list[dict]
) -> dict[str, str]:
    """One mask per structure of the label map ``labels_file`` (uint8 0/1, its grid), as the
    job's own outputs: ``<out_folder>/structures/<name>.nii.gz``, ``structures.json`` with each
    ``volume_cm3``, and both zipped in ``<out_folder>/structures.zip``. Returns the SHA-256 of
    the zip by path relative to ``result_dir``."""
    result_dir = Path(result_dir)
    labels = nib.load(result_dir / labels_file)
    array = np.asarray(labels.dataobj)
    voxel_cm3 = float(np.prod(labels.header.get_zooms()[:3])) / 1000
    out = result_dir / out_folder
    os.makedirs(out / "structures", mode=0o750, exist_ok=True)
    table = []
    for s in structures:
        mask = (array == s["label"]).astype(np.uint8)
        image = nib.Nifti1Image(mask, labels.affine)
        write_atomically(out / "structures" / f"{s['name']}.nii.gz", lambda tmp, image=image: nib.save(image, tmp))
        table.append({**s, "volume_cm3": round(int(mask.sum()) * voxel_cm3, 3)})
    text = json.dumps(table)
    write_atomically(out / "structures.json", lambda tmp: Path(tmp).write_text(text))
    structures_zip(out, out / "structures.zip")
    return _digests(result_dir, out_folder, ("structures.zip",))


# --- Checksums of stored outputs ----------------------------------------------------


def sha256_of(handle: BinaryIO) -> str:
    """SHA-256 (hex) of an open binary file, read from its current position to the end."""
    return hashlib.file_digest(handle, "sha256").hexdigest()


def output_checksums(result_dir: Path) -> dict[str, str]:
    """SHA-256 of every file under ``result_dir``, by POSIX path relative to it, sorted."""
    result_dir = Path(result_dir)
    checksums = {}
    for path in sorted(p for p in result_dir.rglob("*") if p.is_file() and not p.is_symlink()):
        with open(path, "rb") as handle:
            checksums[path.relative_to(result_dir).as_posix()] = sha256_of(handle)
    return checksums


class DamagedOutput(Exception):
    """A stored output is missing or no longer matches the checksum recorded when its job succeeded."""


def open_verified(result_dir: Path, name: str, checksums: dict[str, str]) -> BinaryIO:
    """Open the output ``name`` (path relative to ``result_dir``) for reading, after checking it
    against ``checksums`` (``Job.checksums``). The returned handle is at the start of the very
    file that was checked (a file renamed over it later is not the one served).

    A job finished before checksums were recorded (``checksums`` empty) is served unchecked.

    Raises:
        FileNotFoundError: the output does not exist and none was recorded.
        DamagedOutput: it was recorded and is missing, was not recorded, or its SHA-256 differs.
    """
    path = Path(result_dir) / name
    expected = checksums.get(name)
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        if expected is None:
            raise
        raise DamagedOutput(f"{name} is missing") from None
    if not checksums:
        return handle
    try:
        if expected is None:
            raise DamagedOutput(f"{name} was not among the job's outputs")
        if sha256_of(handle) != expected:
            raise DamagedOutput(f"{name} does not match its recorded SHA-256")
        handle.seek(0)
    except BaseException:
        handle.close()
        raise
    return handle


def roundtrip_threshold(result_dir: Path | None) -> float | None:
    """The Dice threshold the engine's RTSTRUCT round-trip check applied (``rtstruct_check.json``)."""
    try:
        return float(json.loads((Path(result_dir) / "rtstruct_check.json").read_text())["threshold"])
    except (TypeError, OSError, ValueError, KeyError):
        return None


def audit_report(result_dir: Path | None) -> dict | None:
    """What the pages show of a contour audit: ``AUDIT_FIELDS`` of ``audit.json``, or None."""
    try:
        document = json.loads((Path(result_dir) / "audit.json").read_text())
    except (TypeError, OSError, ValueError):
        return None
    if not isinstance(document, dict):
        return None
    report = {key: document.get(key) for key in AUDIT_FIELDS}
    report["structures"] = report["structures"] or []
    report["notes"] = report["notes"] or []
    return report


def verify_outputs(result_dir: Path, names: tuple[str, ...], checksums: dict[str, str]) -> None:
    """Check the outputs ``names`` of a job against its recorded checksums (``open_verified``).

    Raises:
        DamagedOutput: one is missing or no longer matches its recorded SHA-256.
    """
    for name in names:
        try:
            open_verified(result_dir, name, checksums).close()
        except FileNotFoundError:
            raise DamagedOutput(f"{name} is missing") from None


def propagation_report(result_dir: Path | None) -> dict | None:
    """What the pages show of a propagation: ``PROPAGATION_FIELDS`` of ``report.json``
    (per structure: name, label, volume_ml, dice_vs_direct, msd_mm_vs_direct,
    hd95_mm_vs_direct, folding_percent_inside, warning), or None."""
    try:
        document = json.loads((Path(result_dir) / "report.json").read_text())
    except (TypeError, OSError, ValueError):
        return None
    if not isinstance(document, dict):
        return None
    report = {key: document.get(key) for key in PROPAGATION_FIELDS}
    report["structures"] = [s for s in report["structures"] or [] if isinstance(s, dict)]
    report["notes"] = report["notes"] or []
    return report


def direct_available(report: dict | None) -> set[str]:
    """Names of the structures a propagation also segmented directly (a Dice against it exists)."""
    return {s["name"] for s in (report or {}).get("structures", []) if s.get("dice_vs_direct") is not None}


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
