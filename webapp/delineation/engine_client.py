"""The web application's one door to the engine: no other module of ``webapp`` imports it.

What the web process may use is imported here at once and loads neither PyTorch nor
MONAI: the errors, the result-folder contract (``ResultFolder``), the model cards and
the names of the propagation methods, the upload's pre-flight check and
de-identification. Everything that runs a model or builds a DICOM export is imported
inside the function that needs it, and is called by the worker only (``runner``,
``exports``): the web process never loads PyTorch (``tests/test_web_without_torch.py``).

Only the engine's base error is caught (:class:`engine.errors.EngineError`): it becomes
:class:`DelineationError` with a message for the physician. Anything else the engine
raises is a bug and reaches the caller as it is (the job fails as an internal error).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import EngineError, ExportError, ModelError, ToolError
from engine.infer.methods import propagation_models as _propagation_models
from engine.io.atomic import write_atomically
from engine.models.card import ModelCard, list_cards
from engine.results import ResultFolder, RevisionExport, StructureEntry
from engine.structure import Structure
from webapp.delineation.redact import traceback_without_messages

# Used by outputs, viewer, revisions and the models: the result folder and its structures.
__all__ = ["ResultFolder", "RevisionExport", "Structure", "StructureEntry", "write_atomically"]

logger = logging.getLogger(__name__)
Progress = Callable[[str, int], None]


class DelineationError(Exception):
    """The engine cannot do what was asked; ``message`` is meant for the physician."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PreflightError(DelineationError):
    """An upload the engine cannot read as a volume."""


class DeidentificationFailed(DelineationError):
    """An upload whose DICOM files could not be de-identified."""


@contextmanager
def _engine_errors(explain: Callable[[EngineError], str] = lambda exc: exc.message) -> Iterator[None]:
    """Turn the engine's errors into :class:`DelineationError` (``explain`` words them)."""
    try:
        yield
    except EngineError as exc:
        raise DelineationError(explain(exc)) from None


@contextmanager
def _installed(what: str = "delineation engine") -> Iterator[None]:
    """A worker without the engine's model code fails the job with a message, not the worker."""
    try:
        yield
    except ImportError as exc:
        raise DelineationError(f"The {what} is not available on this worker ({exc}).") from exc


@dataclass
class EngineResult:
    """A delineation (``engine.infer.segment.segment_file``) as the job records it."""

    structures: list[StructureEntry]
    timings_s: dict[str, float]
    input_kind: str
    model_name: str
    weights_sha256: str
    rtstruct_roundtrip: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # outputs not written, and why
    domain: dict = field(default_factory=dict)  # engine.infer.domain.check_domain


@dataclass
class AuditEngineResult:
    """A contour audit (``engine.infer.audit.audit_file``) as the job records it."""

    structures: list[StructureEntry]  # the model's delineation
    audit: list[dict]  # one entry per audited ROI, worst Dice first (StructureAudit)
    timings_s: dict[str, float]
    model_name: str
    weights_sha256: str
    notes: list[str] = field(default_factory=list)  # ROIs not audited, and why


@dataclass
class PropagationEngineResult:
    """A contour propagation (``engine.infer.propagate.propagate_files``) as the job records it."""

    structures: list[StructureEntry]  # the propagated contours on the daily scan
    report: dict  # report.json: per-structure agreement with the direct segmentation, folding
    timings_s: dict[str, float]
    model_name: str
    weights_sha256: str  # empty for a classical registration (no weights)
    input_kind: str  # of the daily scan: "dicom" or "nifti"
    notes: list[str] = field(default_factory=list)


# --- Models (their cards; no network is loaded) ----------------------------------------


def available_models() -> list[str]:
    """Names of the shipped segmentation models."""
    return [card.name for card in list_cards("segmentation")]


def model_cards() -> list[dict]:
    """For each shipped model: its name, structures (label, name, colour), description,
    version and modality where the card gives them, ``audit``: whether it ships a
    contour-quality critic, so it can audit a structure set, and ``domain``: the scans it
    was trained for (``engine.infer.domain``; absent if none)."""
    entries = []
    for card in (ModelCard.load(name) for name in available_models()):
        entry: dict = {
            "name": card.name,
            "structures": [s.to_dict() for s in card.structures],
            "audit": card.critic is not None,
        }
        entry |= {key: card.text(key) for key in ("description", "version", "modality") if card.text(key)}
        if card.domain is not None:
            entry["domain"] = card.domain
        entries.append(entry)
    return entries


def domain_notes(report: dict) -> list[dict]:
    """Before a job is queued: for each usable series of a pre-flight ``report`` and each
    model with a domain, what its headers already say against that domain
    (``engine.infer.domain.preflight_findings``): ``{"series", "model", "reasons"}``."""
    from engine.infer.domain import preflight_findings  # NumPy and SciPy only

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
    return [card["name"] for card in model_cards() if card["audit"]]


def structure_names() -> list[str]:
    """The structure names (TG-263 and the training data's spelling) of the shipped models'
    cards: ROI names that de-identification keeps."""
    return sorted(set().union(*(ModelCard.load(name).roi_names for name in available_models())))


def propagation_models() -> list[str]:
    """Names of the propagation methods: classical registrations, then joint models."""
    return _propagation_models()


# --- Uploads ---------------------------------------------------------------------------


def preflight(path: Path, keep_refused: bool = False) -> dict:
    """The engine's pre-flight report of an upload (``engine.io.preflight.inspect_input``):
    series with geometry and status, skipped files, other DICOM objects, ``selected``, and
    ``patient_ids`` (the DICOM Patient ID of each series, to be taken out before the report
    is stored). Raises :class:`PreflightError` when nothing in the upload can be
    delineated; with ``keep_refused`` only when nothing can be read, and a report whose
    every series is refused gets ``refused``, the reasons in a sentence."""
    from engine.io.preflight import inspect_input

    try:
        with _engine_errors():
            report = inspect_input(path, patient_ids=True)
    except DelineationError as exc:
        raise PreflightError(exc.message) from None
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


def deidentify(source: Path, out_dir: Path) -> dict:
    """De-identify the DICOM files of an upload into ``out_dir`` (``engine.io.deidentify``:
    DICOM PS3.15 Annex E Basic Profile; the shipped models' structure names are kept as
    ROI names, Clean Descriptors Option). Returns the record kept on the scan
    (``Scan.deidentification``). Raises :class:`DeidentificationFailed`."""
    from engine.io.deidentify import TABLE_EDITION, deidentify_upload

    try:
        with _engine_errors():
            result = deidentify_upload(source, out_dir, keep_roi_names=structure_names())
    except DelineationError as exc:
        raise DeidentificationFailed(exc.message) from None
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
    """Why nibabel raised ``exc`` reading ``path``, in words."""
    from engine.io.nifti import why_unreadable

    return why_unreadable(exc, Path(path))


# --- Jobs (the worker only) ------------------------------------------------------------


def run_segmentation(
    input_path: Path, model_name: str, out_dir: Path, progress: Progress | None = None, series: str | None = None
) -> EngineResult:
    """``engine.infer.segment.segment_file`` into ``out_dir``."""
    with _installed():
        from engine.infer.segment import segment_file

    with _engine_errors(lambda exc: f"Unknown model: {exc.message}" if isinstance(exc, ModelError) else exc.message):
        result = segment_file(Path(input_path), model_name, Path(out_dir), progress=progress, series=series)
    return EngineResult(
        structures=list(result.structures),
        timings_s={k: float(v) for k, v in result.timings_s.items()},
        input_kind=str(result.input_kind),
        model_name=str(result.model_name),
        weights_sha256=str(result.weights_sha256),
        rtstruct_roundtrip={k: float(v) for k, v in result.rtstruct_roundtrip.items()},
        notes=[str(n) for n in result.notes],
        domain=dict(result.domain or {}),
    )


def run_audit(
    input_path: Path, model_name: str, out_dir: Path, progress: Progress | None = None, series: str | None = None
) -> AuditEngineResult:
    """``engine.infer.audit.audit_file`` on the structure set of the upload."""
    with _installed():
        from engine.infer.audit import AuditError, audit_file
    from engine.io.rtstruct_import import RTStructImportError

    def explain(exc: EngineError) -> str:
        if isinstance(exc, AuditError):
            return f"The contours cannot be audited: {exc.message}."
        if isinstance(exc, RTStructImportError):
            return f"The structure set (RTSTRUCT) could not be read: {exc.message}"
        return f"Unknown model: {exc.message}" if isinstance(exc, ModelError) else exc.message

    with _engine_errors(explain):
        result = audit_file(Path(input_path), model_name, Path(out_dir), progress=progress, series=series)
    return AuditEngineResult(
        structures=ResultFolder(out_dir).read_structures(),
        audit=[dataclasses.asdict(a) for a in result.structures],
        timings_s={k: float(v) for k, v in result.timings_s.items()},
        model_name=str(result.model_name),
        weights_sha256=str(result.weights_sha256),
        notes=[str(n) for n in result.notes],
    )


def planning_rtstruct(planning_input: Path, sop_instance_uid: str, destination: Path) -> Path:
    """Copy the RTSTRUCT with ``sop_instance_uid`` out of the planning upload (folder or zip)
    into ``destination``, for the engine to read as the planning contours."""
    from engine.io.dicom_files import read_upload

    try:
        with _engine_errors(lambda exc: f"The planning upload could not be read ({exc.message})."):
            others = read_upload(Path(planning_input)).others
    except (zipfile.BadZipFile, OSError) as exc:
        raise DelineationError(f"The planning upload could not be read ({exc}).") from None
    for ds in others:
        if str(ds.get("Modality", "")) == "RTSTRUCT" and str(ds.get("SOPInstanceUID", "")) == sop_instance_uid:
            ds.save_as(destination, enforce_file_format=True)
            return Path(destination)
    raise DelineationError(
        "The planning upload no longer holds the chosen structure set (RTSTRUCT); start a new propagation."
    )


def _propagation_failed(exc: EngineError) -> str:
    if isinstance(exc, ExportError):
        return exc.message
    if isinstance(exc, ToolError):
        return f"The registration failed: {exc.message}"
    return f"The contours could not be propagated: {exc.message}"  # the scans, contours or model


def run_propagation(
    fixed: Path, moving: Path, contours: Path, model_name: str, out_dir: Path, progress: Progress | None = None
) -> PropagationEngineResult:
    """``engine.infer.propagate.propagate_files``: the ``contours`` of the ``moving``
    (planning) scan, an RTSTRUCT file or a delineation's result folder, propagated onto the
    ``fixed`` (daily) scan into ``out_dir`` (see ``engine.results``)."""
    with _installed("contour propagation engine"):
        from engine.infer.propagate import propagate_files
    from engine.io.reader import is_nifti

    with _engine_errors(_propagation_failed):
        report = propagate_files(Path(fixed), Path(moving), Path(contours), model_name, Path(out_dir), progress)
    return PropagationEngineResult(
        structures=ResultFolder(out_dir).read_structures(),
        report=report,
        timings_s={k: float(v) for k, v in dict(report.get("timings") or {}).items()},
        model_name=str(report.get("model") or model_name),
        weights_sha256=str(report.get("sha256") or ""),
        input_kind="nifti" if is_nifti(Path(fixed)) else "dicom",
        notes=[str(n) for n in report.get("notes") or []],
    )


# --- Exports after a job (the worker only: ``exports``) --------------------------------


def write_final_rtstruct(
    folder: ResultFolder, daily_input: Path, series_key: str, choices: Mapping[str, str], provenance: tuple[str, str]
) -> ResultFolder:
    """``engine.io.exports.write_final_rtstruct``: ``final/`` with the RTSTRUCT for the daily
    scan from the physician's ``choices``; ``provenance``: (model name, weights SHA-256)."""
    from engine.io.exports import write_final_rtstruct as write

    with _engine_errors():
        return write(folder, Path(daily_input), series_key, choices, *provenance)


def write_revision_rtstruct(
    revision: RevisionExport, set_label: str, approval: tuple[str, datetime.datetime] | None
) -> None:
    """``engine.io.exports.write_revision_rtstruct``; ``approval``: (reviewer as a DICOM
    name, when), None while unapproved."""
    from engine.io.exports import Approval
    from engine.io.exports import write_revision_rtstruct as write

    with _engine_errors():
        write(revision, set_label, None if approval is None else Approval(*approval))


def write_revision_seg(revision: RevisionExport) -> None:
    """``engine.io.exports.write_revision_seg``."""
    from engine.io.exports import write_revision_seg as write

    with _engine_errors():
        write(revision)


def write_revision_structures(revision: RevisionExport) -> None:
    """One mask per structure of the revision's label map and ``structures.json`` with
    each volume, in ``revision.out`` (``ResultFolder.write_structures``)."""
    with _engine_errors():
        labels = revision.folder.read_labels(revision.labels_file)
        revision.out.write_structures(labels, revision.structures)
