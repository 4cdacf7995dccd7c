"""Storing uploads unchanged, with the checks that can be made without the engine.

An upload is one of:

* one ``.zip`` holding a DICOM series (any folder structure inside),
* one ``.nii`` or ``.nii.gz`` file,
* the files of a DICOM folder, each with its path relative to the chosen folder.

Files are written byte for byte under ``MEDIA_ROOT/scans/<uuid>/original/``, a folder made
fresh for each upload. Nothing is dropped, renamed or converted: files that are not DICOM
(a ``DICOMDIR``, ``.DS_Store``) are kept and reported. When a check fails,
:class:`UploadError` carries a message for the physician and nothing is left on disk.

With de-identification asked for (:func:`deidentify_stored`), the DICOM files are then
replaced by de-identified copies under ``deidentified/`` and ``original/`` is deleted
before the scan is recorded.

Limits (settings ``DELINEO_*``, docs/security.md): the size and file count of a request are
counted while it streams in (``upload_limits.UploadLimitHandler``); a zip is never unpacked to disk,
only its directory is checked (``upload_checks.check_zip_members``) before the engine reads it.
"""

from __future__ import annotations

import errno
import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from pydicom.misc import is_dicom

from webapp.delineation import engine_client, rules
from webapp.delineation.models import Scan, scan_dir
from webapp.delineation.patients import PatientIdError, clean_patient_id, patient_for
from webapp.delineation.upload_checks import (
    UploadError,
    check_nesting,
    check_nifti,
    check_size,
    check_zip,
    is_nifti_name,
    safe_relative_path,
    write_upload,
)

ACCEPTED = "a zip of a DICOM series, a folder of DICOM files, or a NIfTI file (.nii or .nii.gz)"


@dataclass
class StoredUpload:
    name: str
    input_kind: str  # Scan.InputKind value
    input_path: Path  # absolute: the engine input (zip, NIfTI file or original/ folder)
    file_count: int
    size_bytes: int
    notes: dict = field(default_factory=dict)


def store_upload(
    target_dir: Path,
    single: UploadedFile | None,
    files: Sequence[UploadedFile],
    paths: Sequence[str],
    name: str = "",
) -> StoredUpload:
    """Write an upload under ``target_dir/original/`` and check it; see the module docstring.

    Raises:
        UploadError: the upload is refused; ``target_dir`` is removed.
        FileExistsError: ``target_dir`` exists already (it is left alone).
    """
    target_dir.mkdir(parents=True, exist_ok=False)  # fresh for every upload: nothing else is ever removed
    try:
        return _store(target_dir, single, files, paths, name)
    except BaseException:
        shutil.rmtree(target_dir, ignore_errors=True)
        raise


def _store(
    target_dir: Path, single: UploadedFile | None, files: Sequence[UploadedFile], paths: Sequence[str], name: str
) -> StoredUpload:
    original = target_dir / "original"
    if single is not None and files:
        raise UploadError("Send either one file (field 'file') or the files of a folder (field 'files'), not both.")
    if single is None and not files:
        raise UploadError(f"No file was received. Upload {ACCEPTED}.")

    if single is not None:
        if len(files) == 0 and paths:
            raise UploadError("Relative paths ('paths') go with the files of a folder ('files'), not with 'file'.")
        shown = single.name or "upload"
        check_size(single.size or 0)
        filename = PurePosixPath(shown.replace("\\", "/")).name
        if filename in ("", ".", ".."):
            raise UploadError("The uploaded file has no name.")
        target = original / filename
        lower = filename.lower()
        if lower.endswith(".zip"):
            write_upload(single, target)
            notes = check_zip(target, shown)
            kind = "dicom_zip"
        elif is_nifti_name(lower):
            write_upload(single, target)
            notes = check_nifti(target, shown)
            kind = "nifti"
        else:
            write_upload(single, target)
            if is_dicom(target):
                raise UploadError(
                    f"{shown!r} is a single DICOM file, but a CT is a series of files (one per slice). "
                    "Upload the whole series: a zip of its folder, or the folder itself."
                )
            raise UploadError(f"{shown!r} is not a supported file. Upload {ACCEPTED}.")
        return StoredUpload(name or filename, kind, target, 1, target.stat().st_size, notes)

    # A folder of DICOM files.
    if paths and len(paths) != len(files):
        raise UploadError(
            f"Received {len(files)} files but {len(paths)} relative paths; send one path per file or none."
        )
    if len(files) > settings.DELINEO_MAX_UPLOAD_FILES:
        raise UploadError(
            f"The folder has {len(files)} files; the limit on this server is {settings.DELINEO_MAX_UPLOAD_FILES}.",
            status=413,
        )
    check_size(sum(f.size or 0 for f in files))
    raw_paths = list(paths) if paths else [f.name or "" for f in files]
    relative = [safe_relative_path(p) for p in raw_paths]
    seen: set[PurePosixPath] = set()
    for rel in relative:
        if rel in seen:
            raise UploadError(
                f"Two files have the same name {str(rel)!r}. Upload the folder as a zip, "
                "or send each file's relative path in 'paths'."
            )
        seen.add(rel)
    check_nesting(relative)
    for upload, rel in zip(files, relative, strict=True):
        try:
            write_upload(upload, original.joinpath(*rel.parts))
        except OSError as exc:
            if exc.errno not in (errno.ENAMETOOLONG, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
            # Not the exception's text: it holds the path on the server.
            raise UploadError(
                f"The file {str(rel)!r} cannot be stored under its path in the folder (the path is too long, or "
                "clashes with another file's). Upload the folder as a zip."
            ) from None
    return stored_folder(original, relative, name)


def stored_folder(original: Path, relative: Sequence[PurePosixPath], name: str = "") -> StoredUpload:
    """The files written under ``original`` (paths ``relative`` to it) as a DICOM folder
    upload: counts, size, default name. Used for browser uploads and for what the DICOM
    node received (``dicom.assembly``).

    Raises:
        UploadError: none of the files is DICOM.
    """
    dicom = [rel for rel in relative if is_dicom(original.joinpath(*rel.parts))]
    if not dicom:
        raise UploadError(
            f"None of the {len(relative)} files is a DICOM file. Upload the folder of a DICOM series, "
            "a zip of it, or a NIfTI file."
        )
    others = sorted(str(rel) for rel in relative if rel not in set(dicom))
    notes = {"dicom_files": len(dicom), "other_files": len(others)}
    if others:
        notes["other_file_names"] = others[:20]
    tops = {rel.parts[0] for rel in relative if len(rel.parts) > 1}
    default_name = tops.pop() if len(tops) == 1 and all(len(r.parts) > 1 for r in relative) else "DICOM folder"
    total = sum(original.joinpath(*rel.parts).stat().st_size for rel in relative)
    return StoredUpload(name or default_name, "dicom_folder", original, len(relative), total, notes)


NIFTI_NOT_APPLICABLE = (
    "a NIfTI file has no DICOM header, so there is nothing the DICOM profile could remove; "
    "the file is stored as uploaded (under a neutral name)."
)


def deidentify_stored(directory: Path, stored: StoredUpload, name: str) -> tuple[StoredUpload, dict]:
    """Replace the stored upload by its de-identified copy (docs/security.md, "De-identification").

    DICOM: the files are de-identified into ``directory/deidentified/`` by the engine
    (PS3.15 Annex E Basic Profile) and ``directory/original/`` is deleted, so no file of
    the upload as sent remains. NIfTI: the profile does not apply; the file is renamed
    ``image.nii[.gz]``. Either way the scan is named ``name`` or a neutral name, never
    after the uploaded file or folder (which may name the patient).

    Returns:
        The stored upload now on disk, and the record for ``Scan.deidentification``.
    Raises:
        UploadError: a file could not be de-identified.
    """
    original = directory / "original"
    if stored.input_kind == Scan.InputKind.NIFTI:
        suffix = ".nii.gz" if stored.input_path.name.lower().endswith(".gz") else ".nii"
        target = stored.input_path.rename(original / f"image{suffix}")
        notes = {k: v for k, v in stored.notes.items() if k == "nifti_shape"}
        renamed = StoredUpload(name or "NIfTI scan", stored.input_kind, target, 1, stored.size_bytes, notes)
        return renamed, {"profile": None, "reason": NIFTI_NOT_APPLICABLE}
    try:
        record = engine_client.deidentify(stored.input_path, directory / "deidentified")
    except engine_client.DeidentificationFailed as exc:
        raise UploadError(f"The upload could not be de-identified, so it was not kept: {exc.message}") from None
    shutil.rmtree(original)
    if not record["files"]:
        raise UploadError("The upload holds no DICOM file to de-identify.")
    folder = directory / "deidentified"
    files = sorted(folder.iterdir())
    notes = {"dicom_files": len(files), "dropped_files": record["dropped_files"]}
    return (
        StoredUpload(
            name or "De-identified scan",
            stored.input_kind,
            folder,
            len(files),
            sum(f.stat().st_size for f in files),
            notes,
        ),
        record,
    )


def accept_upload(
    owner,
    single: UploadedFile | None,
    files: Sequence[UploadedFile],
    paths: Sequence[str] = (),
    name: str = "",
    patient_id: str = "",
    patient_label: str = "",
    deidentify: bool = False,
) -> Scan:
    """Store an upload, de-identify it when asked (:func:`deidentify_stored`), check it
    (with the engine's reader when pre-flight is on) and record the ``Scan``. Used by the
    API and by the upload page.

    The scan's patient (``patients``) is ``patient_id`` when given, else the DICOM Patient
    ID the pre-flight found (kept out of the stored report); none for a NIfTI file without
    an entered ID. De-identified files carry the upload's pseudonym (``DEID-...``) as Patient
    ID, so such a scan joins the patient's other scans only through an entered ``patient_id``
    (kept on the user's patient, never written into the files); without one it is grouped
    under that pseudonym, a patient of its own.

    Raises:
        UploadError: the upload is refused (also for an unusable ``patient_id``); nothing of it is kept.
    """
    try:
        entered = clean_patient_id(patient_id)
    except PatientIdError as exc:
        raise UploadError(str(exc)) from None
    with _checking_slot():
        return _accept(owner, single, files, paths, name, entered, patient_label, deidentify)


# How many uploads one web-server process stores and checks at once (each check may read a
# whole volume into memory); the others wait for a slot, at most DELINEO_UPLOAD_CHECK_WAIT s.
_slots: threading.BoundedSemaphore | None = None
_slots_size = 0
_slots_lock = threading.Lock()


@contextmanager
def _checking_slot() -> Iterator[None]:
    global _slots, _slots_size
    with _slots_lock:
        if _slots is None or _slots_size != settings.DELINEO_UPLOAD_CHECKS_AT_ONCE:
            _slots_size = settings.DELINEO_UPLOAD_CHECKS_AT_ONCE
            _slots = threading.BoundedSemaphore(_slots_size)
        slots = _slots
    if not slots.acquire(timeout=settings.DELINEO_UPLOAD_CHECK_WAIT):
        raise UploadError(
            "The server is busy checking other uploads and could not take this one. "
            "Nothing of it was kept; send it again in a few minutes.",
            status=503,
        )
    try:
        yield
    finally:
        slots.release()


def _accept(owner, single, files, paths, name, entered, patient_label, deidentify) -> Scan:  # noqa: ANN001
    scan_id = uuid.uuid4()
    directory = scan_dir(scan_id)
    given_name = name.strip()[:255]
    stored = store_upload(directory, single, files, paths, name=given_name)
    return record_stored(owner, scan_id, stored, given_name, entered, patient_label, deidentify)


def record_stored(  # noqa: ANN001 (a user)
    owner,
    scan_id: uuid.UUID,
    stored: StoredUpload,
    given_name: str = "",
    entered: str = "",
    patient_label: str = "",
    deidentify: bool = False,
    keep_refused: bool = False,
) -> Scan:
    """What every upload goes through once its files are under ``scan_dir(scan_id)``:
    de-identification when asked (:func:`deidentify_stored`), the pre-flight check, and the
    ``Scan`` record with its patient. The browser and API uploads (``accept_upload``) and
    the DICOM node (``dicom.assembly``) share it.

    ``keep_refused``: an upload that nothing can be delineated from is still recorded, with
    its refusals in the pre-flight report (``refused``, and each series' reason) for its scan
    page; the DICOM node uses it, as its sender cannot be shown a message and no object it
    was told was stored may be lost. Otherwise it is refused and nothing is kept.

    Raises:
        UploadError: refused (pre-flight without ``keep_refused``, or de-identification failed);
            the folder is removed, except with ``keep_refused``.
    """
    directory = scan_dir(scan_id)
    try:
        deidentification = None
        if deidentify:
            stored, deidentification = deidentify_stored(directory, stored, given_name)
        preflight = _preflight(stored.input_path, keep_refused) if settings.DELINEO_UPLOAD_PREFLIGHT else None
        found_ids = (preflight.pop("patient_ids", None) or {}) if preflight else {}
        info = {**(preflight or {}), "upload": stored.notes} if preflight or stored.notes else None
        with transaction.atomic():
            return Scan.objects.create(
                id=scan_id,
                owner=owner,
                patient=patient_for(owner, entered or rules.dicom_patient_id(preflight, found_ids), patient_label),
                name=stored.name,
                input_kind=stored.input_kind,
                input_path=str(stored.input_path.relative_to(settings.MEDIA_ROOT)),
                file_count=stored.file_count,
                size_bytes=stored.size_bytes,
                preflight=info,
                deidentification=deidentification,
            )
    except engine_client.PreflightError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise UploadError(f"The upload was not accepted: {exc.message}") from None
    except BaseException:
        if not keep_refused:  # the node keeps what it acknowledged, to be checked again
            shutil.rmtree(directory, ignore_errors=True)
        raise


def _preflight(path: Path, keep_refused: bool) -> dict | None:
    if not keep_refused:
        return engine_client.preflight(path)
    try:
        return engine_client.preflight(path, keep_refused=True)
    except engine_client.PreflightError as exc:  # not even one series could be read
        return {"kind": "dicom", "series": [], "refused": exc.message}
