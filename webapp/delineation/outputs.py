"""What a job's result folder holds and how it is offered: the download table, checksums
of stored outputs, the reports the pages show, the zip of one mask per structure.

Names of files come from the engine's result-folder contract (``ResultFolder``); which
job kinds have which download is decided here, once (``DOWNLOADS``).
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from webapp.delineation.engine_client import ResultFolder, write_atomically

R = ResultFolder
FINAL_RTSTRUCT = f"{R.FINAL}/{R.RTSTRUCT}"
# What a contour audit's audit.json may show on the pages and in the API (not the upload's
# file name, which may name the patient), and what a propagation's report.json may.
AUDIT_FIELDS = ("model_name", "structures", "notes")
PROPAGATION_FIELDS = ("model", "structures", "folding_percent", "notes")
KINDS = ("segment", "audit", "propagate")
# Per structure of a propagation, the contours the physician keeps for the final RTSTRUCT.
CHOICES = ("propagated", "direct")


@dataclass(frozen=True)
class Download:
    """One download of a job: ``file`` in its result folder, served at ``url_path``.

    ``kinds``: the job kinds that have it; ``revisions``: it follows the revisions of the
    label map (``?revision=N``); ``acknowledged``: a planning system imports it, so a job
    outside its model's domain needs the warning acknowledged; ``optional``: a job of its
    kinds may have none (the engine notes why)."""

    key: str
    file: str
    url_path: str
    url_name: str
    content_type: str
    what: str
    description: str
    kinds: tuple[str, ...] = KINDS
    revisions: bool = False
    acknowledged: bool = False
    optional: bool = True


DOWNLOADS = (
    Download(
        "labels",
        R.LABELS,
        R.LABELS,
        "labels",
        "application/gzip",
        "label map",
        "The label map (uint8, on the grid of the input image) as NIfTI: of the latest revision, or of "
        "``?revision=N`` (0: the model's output).",
        revisions=True,
        optional=False,
    ),
    Download(
        "structures_zip",
        R.STRUCTURES_ZIP,
        R.STRUCTURES_ZIP,
        "structures-zip",
        "application/zip",
        "zip of one mask per structure",
        "One NIfTI mask per structure (uint8 0/1, input grid) plus structures.json, zipped: of the latest "
        "revision, or of ``?revision=N``.",
        kinds=("segment", "propagate"),
        revisions=True,
        optional=False,
    ),
    Download(
        "rtstruct",
        R.RTSTRUCT,
        R.RTSTRUCT,
        "rtstruct",
        "application/dicom",
        "RTSTRUCT",
        "The RTSTRUCT referencing the uploaded DICOM series (for NIfTI input: the CT exported as DICOM, "
        "``ct_dicom.zip``), of the latest revision or of ``?revision=N``. It passed its round-trip check. An "
        "approved revision's says APPROVED with the reviewer; the structures corrected since the model's output "
        "have ROI Generation Algorithm MANUAL. A revision's is written by the worker on first request: 202 until "
        "it is.",
        revisions=True,
        acknowledged=True,
    ),
    Download(
        "seg",
        R.SEG,
        R.SEG,
        "seg",
        "application/dicom",
        "DICOM SEG",
        "The structures as a DICOM Segmentation (SEG) referencing the same series as the RTSTRUCT, of the latest "
        "revision or of ``?revision=N``; corrected structures' segments are SEMIAUTOMATIC. A revision's is "
        "written by the worker on first request: 202 until it is.",
        revisions=True,
        acknowledged=True,
    ),
    Download(
        "ct_dicom",
        R.CT_DICOM_ZIP,
        R.CT_DICOM_ZIP,
        "ct-dicom",
        "application/zip",
        "DICOM export of the CT",
        "NIfTI input only: the CT written as a DICOM series (new UIDs, anonymous patient), which the RTSTRUCT "
        "and SEG reference, so a planning system can import all three.",
    ),
    Download(
        "audit",
        R.AUDIT,
        R.AUDIT,
        "audit-json",
        "application/json",
        "contour audit",
        "Contour audit jobs only: the audit as the engine wrote it (``engine.infer.audit``), one entry per "
        "audited ROI with its QAM score, Dice, MSD and HD95 against the model, the combined check and why it is flagged.",
        kinds=("audit",),
    ),
    Download(
        "propagation",
        R.PROPAGATION,
        "propagation.json",
        "propagation-json",
        "application/json",
        "propagation report",
        "Contour propagation jobs only: ``report.json`` as the engine wrote it (model, per structure volume_ml, "
        "Dice, MSD and HD95 in mm against the direct segmentation, folding inside, warning; folding_percent, "
        "timings).",
        kinds=("propagate",),
    ),
    Download(
        "ddf",
        R.DDF,
        R.DDF,
        "ddf",
        "application/gzip",
        "displacement field",
        "Contour propagation jobs only: the dense displacement field on the daily scan's grid, NIfTI vector "
        "(I, J, K, 3), mm in RAS: the daily-scan point p corresponds to the planning-scan point p + u(p).",
        kinds=("propagate",),
    ),
    Download(
        "final_rtstruct",
        FINAL_RTSTRUCT,
        "final_rtstruct.dcm",
        "final-rtstruct",
        "application/dicom",
        "RTSTRUCT for the daily scan",
        "Contour propagation jobs only: the RTSTRUCT for the daily scan with, per structure, the contours chosen "
        "(``choices``; propagated where none was chosen), referencing the daily series. Written by the worker "
        "after each change of the choices: 202 until it is.",
        kinds=("propagate",),
        optional=False,
    ),
)
BY_KEY = {d.key: d for d in DOWNLOADS}


def links(job, reverse) -> dict[str, str | None]:  # noqa: ANN001 (a Job; django.urls.reverse)
    """The download URLs of a succeeded job (None: it has no such file), from the checksums
    recorded when it finished; the disk is looked at only for a job finished before them."""
    if job.status != job.Status.SUCCEEDED:
        return {}
    folder = ResultFolder(job.result_path) if job.result_path else None
    found = {}
    for d in DOWNLOADS:
        has = job.kind in d.kinds and (
            not d.optional
            or d.file in job.checksums
            or (not job.checksums and folder is not None and folder.has(d.file))
        )
        found[d.key] = reverse(f"api-job-{d.url_name}", args=[job.id]).rstrip("/") if has else None
    return found


def missing_reason(job, download: Download) -> str:  # noqa: ANN001 (a Job)
    """Why ``job`` has no ``download``, for the physician."""
    why = " ".join(job.notes)
    if download.key == "ct_dicom" and job.input_kind == "dicom":
        why = "The scan was uploaded as DICOM: the RTSTRUCT and SEG reference the uploaded series."
    if download.kinds == ("audit",) and not job.is_audit:
        why = "This job is not a contour audit."
    elif download.kinds == ("propagate",) and not job.is_propagation:
        why = "This job is not a contour propagation."
    elif job.is_audit:
        why = "A contour audit writes the audit and the model's label map, not the delineation's DICOM files."
    return why


# --- Checksums of stored outputs -------------------------------------------------------


def sha256_of(handle: BinaryIO) -> str:
    """SHA-256 (hex) of an open binary file, read from its current position to the end."""
    return hashlib.file_digest(handle, "sha256").hexdigest()


def output_checksums(folder: Path, prefix: str = "") -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by POSIX path relative to it (after ``prefix``), sorted."""
    folder = Path(folder)
    checksums = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        with open(path, "rb") as handle:
            checksums[prefix + path.relative_to(folder).as_posix()] = sha256_of(handle)
    return checksums


def checksums_of(result_dir: Path, names: tuple[str, ...]) -> dict[str, str]:
    """SHA-256 of the files ``names`` (paths relative to ``result_dir``)."""
    digests = {}
    for name in names:
        with open(Path(result_dir) / name, "rb") as handle:
            digests[name] = sha256_of(handle)
    return digests


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


# --- Reports for the pages -------------------------------------------------------------


def _report(result_dir: Path | None, name: str) -> dict | None:
    try:
        document = ResultFolder(result_dir).read_json(name) if result_dir is not None else None
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def roundtrip_threshold(result_dir: Path | None) -> float | None:
    """The Dice threshold the engine's RTSTRUCT round-trip check applied (``rtstruct_check.json``)."""
    try:
        return float((_report(result_dir, R.RTSTRUCT_CHECK) or {})["threshold"])
    except (KeyError, TypeError, ValueError):
        return None


def audit_report(result_dir: Path | None) -> dict | None:
    """What the pages show of a contour audit: ``AUDIT_FIELDS`` of ``audit.json``, or None."""
    document = _report(result_dir, R.AUDIT)
    if document is None:
        return None
    report = {key: document.get(key) for key in AUDIT_FIELDS}
    report["structures"] = report["structures"] or []
    report["notes"] = report["notes"] or []
    return report


def propagation_report(result_dir: Path | None) -> dict | None:
    """What the pages show of a propagation: ``PROPAGATION_FIELDS`` of ``report.json``
    (per structure: name, label, volume_ml, dice_vs_direct, msd_mm_vs_direct,
    hd95_mm_vs_direct, folding_percent_inside, warning), or None."""
    document = _report(result_dir, R.PROPAGATION)
    if document is None:
        return None
    report = {key: document.get(key) for key in PROPAGATION_FIELDS}
    report["structures"] = [s for s in report["structures"] or [] if isinstance(s, dict)]
    report["notes"] = report["notes"] or []
    return report


def direct_available(report: dict | None) -> set[str]:
    """Names of the structures a propagation also segmented directly (a Dice against it exists)."""
    return {s["name"] for s in (report or {}).get("structures", []) if s.get("dice_vs_direct") is not None}


# --- Files -----------------------------------------------------------------------------

# Date of every zip entry, so that the same files always give the same zip (and checksum).
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def structures_zip(result_dir: Path, destination: Path) -> Path:
    """Zip ``structures/*.nii.gz`` and ``structures.json`` into ``destination``: written
    under a temporary name and renamed into place; the same files give the same bytes."""
    folder = ResultFolder(result_dir)
    masks = sorted((folder / R.MASKS).glob("*.nii.gz"))
    members = [(mask, f"{R.MASKS}/{mask.name}") for mask in masks]
    if folder.has(R.STRUCTURES):
        members.append((folder / R.STRUCTURES, R.STRUCTURES))

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for source, name in members:
                info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
                info.external_attr = 0o644 << 16
                with open(source, "rb") as src, archive.open(info, "w") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)

    return write_atomically(destination, write)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
