"""Storing uploads unchanged, with the checks that can be made without the engine.

An upload is one of:

* one ``.zip`` holding a DICOM series (any folder structure inside),
* one ``.nii`` or ``.nii.gz`` file,
* the files of a DICOM folder, each with its path relative to the chosen folder.

Files are written byte for byte under ``MEDIA_ROOT/scans/<uuid>/original/``. Nothing is
dropped, renamed or converted: files that are not DICOM (a ``DICOMDIR``, ``.DS_Store``)
are kept and reported. When a check fails, :class:`UploadError` carries a message for
the physician and nothing is left on disk.
"""

from __future__ import annotations

import gzip
import shutil
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import nibabel as nib
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from pydicom.misc import is_dicom

from webapp.delineation import services
from webapp.delineation.models import Scan, scan_dir

ACCEPTED = "a zip of a DICOM series, a folder of DICOM files, or a NIfTI file (.nii or .nii.gz)"


class UploadError(Exception):
    """An upload that cannot be accepted; ``message`` is shown to the user as is."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class StoredUpload:
    name: str
    input_kind: str  # Scan.InputKind value
    input_path: Path  # absolute: the engine input (zip, NIfTI file or original/ folder)
    file_count: int
    size_bytes: int
    notes: dict = field(default_factory=dict)


def is_nifti_name(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(".nii") or lower.endswith(".nii.gz")


def safe_relative_path(raw: str) -> PurePosixPath:
    """A relative path from the browser (``CT/IM0001.dcm``), checked to stay inside the folder."""
    text = raw.replace("\\", "/").strip()
    if text.startswith("/"):
        raise UploadError(f"The file path {raw!r} is absolute; send paths relative to the uploaded folder.")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or ":" in parts[0] or any("\x00" in p for p in parts):
        raise UploadError(f"The file path {raw!r} is not a valid relative path inside the uploaded folder.")
    return PurePosixPath(*parts)


def _check_size(total: int) -> None:
    limit = settings.DELINEO_MAX_UPLOAD_BYTES
    if total > limit:
        raise UploadError(
            f"The upload is {total / 2**20:.0f} MiB; the limit on this server is {limit / 2**20:.0f} MiB.",
            status=413,
        )


def _write(upload: UploadedFile, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "xb") as out:
        for chunk in upload.chunks():
            out.write(chunk)


def _check_zip(path: Path, shown_name: str) -> dict:
    if not zipfile.is_zipfile(path):
        raise UploadError(f"{shown_name!r} is not a valid zip file (it may be damaged or incomplete).")
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if not members:
                raise UploadError(f"The zip file {shown_name!r} is empty.")
            if any(m.flag_bits & 0x1 for m in members):
                raise UploadError(f"The zip file {shown_name!r} is password-protected; upload it without a password.")
            unpacked = sum(m.file_size for m in members)
            if unpacked > 8 * settings.DELINEO_MAX_UPLOAD_BYTES:
                raise UploadError(
                    f"The zip file {shown_name!r} unpacks to {unpacked / 2**30:.1f} GiB, which is too large."
                )
            damaged = archive.testzip()
            if damaged is not None:
                raise UploadError(f"The zip file {shown_name!r} is damaged: {damaged!r} fails its checksum.")
            names = [m.filename for m in members]
    except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError) as exc:
        raise UploadError(f"The zip file {shown_name!r} cannot be read: {exc}.") from None
    if names and all(is_nifti_name(n) for n in names):
        raise UploadError(
            f"The zip file {shown_name!r} holds NIfTI files; upload the .nii or .nii.gz file itself instead."
        )
    return {"zip_members": len(names)}


def _check_nifti(path: Path, shown_name: str) -> dict:
    if path.name.lower().endswith(".gz"):
        try:
            with gzip.open(path) as f:
                f.read(16)
        except (OSError, EOFError):
            raise UploadError(f"{shown_name!r} is named .nii.gz but is not gzip-compressed (or is damaged).") from None
    try:
        image = nib.load(path)
        shape = tuple(int(n) for n in image.shape)
    except Exception as exc:  # nibabel raises many types for bad headers
        raise UploadError(f"{shown_name!r} is not a readable NIfTI file: {exc}") from None
    if len(shape) < 3 or min(shape[:3]) < 1 or any(n != 1 for n in shape[3:]):
        raise UploadError(f"{shown_name!r} has shape {shape}; a 3D image is needed.")
    return {"nifti_shape": list(shape[:3])}


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
    """
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
        _check_size(single.size or 0)
        filename = PurePosixPath(shown.replace("\\", "/")).name
        if filename in ("", ".", ".."):
            raise UploadError("The uploaded file has no name.")
        target = original / filename
        lower = filename.lower()
        if lower.endswith(".zip"):
            _write(single, target)
            notes = _check_zip(target, shown)
            kind = "dicom_zip"
        elif is_nifti_name(lower):
            _write(single, target)
            notes = _check_nifti(target, shown)
            kind = "nifti"
        else:
            _write(single, target)
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
    _check_size(sum(f.size or 0 for f in files))
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
    for upload, rel in zip(files, relative, strict=True):
        _write(upload, original.joinpath(*rel.parts))
    dicom = [rel for rel in relative if is_dicom(original.joinpath(*rel.parts))]
    if not dicom:
        raise UploadError(
            f"None of the {len(files)} files is a DICOM file. Upload the folder of a DICOM series, "
            "a zip of it, or a NIfTI file."
        )
    others = sorted(str(rel) for rel in relative if rel not in set(dicom))
    notes = {"dicom_files": len(dicom), "other_files": len(others)}
    if others:
        notes["other_file_names"] = others[:20]
    tops = {rel.parts[0] for rel in relative if len(rel.parts) > 1}
    default_name = tops.pop() if len(tops) == 1 and all(len(r.parts) > 1 for r in relative) else "DICOM folder"
    total = sum(original.joinpath(*rel.parts).stat().st_size for rel in relative)
    return StoredUpload(name or default_name, "dicom_folder", original, len(files), total, notes)


def accept_upload(
    owner,
    single: UploadedFile | None,
    files: Sequence[UploadedFile],
    paths: Sequence[str] = (),
    name: str = "",
) -> Scan:
    """Store an upload, check it (with the engine's reader when pre-flight is on) and
    record the ``Scan``. Used by the API and by the upload page.

    Raises:
        UploadError: the upload is refused; nothing of it is kept.
    """
    scan_id = uuid.uuid4()
    directory = scan_dir(scan_id)
    stored = store_upload(directory, single, files, paths, name=name.strip()[:255])
    try:
        preflight = services.preflight(stored.input_path) if settings.DELINEO_UPLOAD_PREFLIGHT else None
        info = {**(preflight or {}), "upload": stored.notes} if preflight or stored.notes else None
        with transaction.atomic():
            return Scan.objects.create(
                id=scan_id,
                owner=owner,
                name=stored.name,
                input_kind=stored.input_kind,
                input_path=str(stored.input_path.relative_to(settings.MEDIA_ROOT)),
                file_count=stored.file_count,
                size_bytes=stored.size_bytes,
                preflight=info,
            )
    except services.PreflightError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise UploadError(f"The upload was not accepted: {exc.message}") from None
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
