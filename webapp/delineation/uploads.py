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
counted while it streams in (:class:`UploadLimitHandler`); a zip is never unpacked to disk,
only its directory is checked (:func:`check_zip_members`) before the engine reads it.
"""

from __future__ import annotations

import errno
import gzip
import os
import shutil
import stat
import struct
import tempfile
import threading
import uuid
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import nibabel as nib
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.db import transaction
from pydicom.misc import is_dicom

from webapp.delineation import services
from webapp.delineation.models import Scan, scan_dir
from webapp.delineation.patients import PatientIdError, clean_patient_id, patient_for

ACCEPTED = "a zip of a DICOM series, a folder of DICOM files, or a NIfTI file (.nii or .nii.gz)"


class UploadError(Exception):
    """An upload that cannot be accepted; ``message`` is shown to the user as is."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# Set on the request by UploadLimitHandler; read by the views through refusal_of().
_REFUSAL = "delineo_upload_refusal"


def _human(size: float) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size:.0f} bytes"


def too_large(limit: int) -> UploadError:
    return UploadError(
        f"The upload is larger than {_human(limit)}, the limit on this server; it was stopped there. "
        "Upload one series at a time, or ask the administrator to raise the limit.",
        status=413,
    )


def too_many_files(limit: int) -> UploadError:
    return UploadError(
        f"The upload has more than {limit} files, the limit on this server. Upload one series at a time.",
        status=413,
    )


class UploadLimitHandler(FileUploadHandler):
    """The first of ``FILE_UPLOAD_HANDLERS``: counts the files and bytes of a request while
    the body streams in, and stops the upload as soon as ``DELINEO_MAX_UPLOAD_FILES`` or
    ``DELINEO_MAX_UPLOAD_BYTES`` is passed: no byte beyond the limit reaches the handlers
    that store files, and those stored so far are dropped with the request. Django then
    reads and discards the rest of the body so that the client receives the message: at
    most about the size limit, because a ``Content-Length`` far above the limit stops the
    upload at its first file, before any of its bytes are read, and leaves the body unread.
    Form fields sent before the files (the CSRF token of the upload page) are kept. The
    refusal is left on the request for the view (:func:`refusal_of`)."""

    def __init__(self, request=None) -> None:
        super().__init__(request)
        self.declared = self.received = self.files = 0

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        self.declared = content_length
        return None  # parse as usual

    def new_file(self, *args, **kwargs) -> None:
        super().new_file(*args, **kwargs)
        self.files += 1
        byte_limit, file_limit = settings.DELINEO_MAX_UPLOAD_BYTES, settings.DELINEO_MAX_UPLOAD_FILES
        if self.files > file_limit:
            self._refuse(too_many_files(file_limit), reset=False)
        # Room for the multipart headers and one "paths" field per file.
        if self.declared > byte_limit + (1 << 20) + 2048 * file_limit:
            self._refuse(too_large(byte_limit), reset=True)  # do not read gigabytes only to discard them

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.received > settings.DELINEO_MAX_UPLOAD_BYTES:
            self._refuse(too_large(settings.DELINEO_MAX_UPLOAD_BYTES), reset=False)
        return raw_data  # to the next handler, which stores it

    def file_complete(self, file_size: int) -> None:
        return None  # the next handler returns the file

    def _refuse(self, error: UploadError, reset: bool) -> None:
        """Record the refusal and stop the parser. ``reset``: leave the rest of the body unread
        (the server may drop the connection); otherwise Django reads and discards it."""
        if self.request is not None:
            setattr(self.request, _REFUSAL, error)
        raise StopUpload(connection_reset=reset)


class AnonymousTemporaryFileUploadHandler(FileUploadHandler):
    """Django's ``TemporaryFileUploadHandler`` without a name on disk: each file of a request
    larger than ``FILE_UPLOAD_MAX_MEMORY_SIZE`` is spooled to ``tempfile.TemporaryFile`` in
    ``FILE_UPLOAD_TEMP_DIR``, which has no directory entry (``O_TMPFILE``, or unlinked as
    soon as it is made). The kernel frees it when the file is closed or its process ends,
    however it ends: a web server killed in the middle of a 2 GB upload leaves nothing."""

    def new_file(self, *args, **kwargs) -> None:
        super().new_file(*args, **kwargs)
        spool = tempfile.TemporaryFile(dir=settings.FILE_UPLOAD_TEMP_DIR)
        self.file = UploadedFile(spool, self.file_name, self.content_type, 0, self.charset, self.content_type_extra)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        self.file.write(raw_data)

    def file_complete(self, file_size: int) -> UploadedFile:
        self.file.seek(0)
        self.file.size = file_size
        return self.file

    def upload_interrupted(self) -> None:
        if hasattr(self, "file"):
            self.file.close()


def refusal_of(request) -> UploadError | None:
    """The refusal :class:`UploadLimitHandler` left on ``request`` (a Django or DRF request),
    once its body has been read (``request.FILES``)."""
    return getattr(getattr(request, "_request", request), _REFUSAL, None)


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
    long = next((p for p in parts if len(p.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES), None)
    if long is not None:
        raise UploadError(
            f"The file or folder name {long[:40]!r}... is longer than {MAX_NAME_BYTES} characters, more than "
            "a disk can store. Shorten it, or upload the folder as a zip."
        )
    return PurePosixPath(*parts)


# The longest file or folder name most file systems store (bytes of UTF-8).
MAX_NAME_BYTES = 255


def _check_nesting(relative: Sequence[PurePosixPath]) -> None:
    """Refuse a folder upload where one path is a file and another needs it as a folder
    (``a/x.dcm`` and ``a/x.dcm/y.dcm``): both cannot exist on a disk."""
    files = set(relative)
    for rel in relative:
        for parent in rel.parents:
            if parent in files:
                raise UploadError(
                    f"{str(parent)!r} is sent both as a file and as a folder holding {str(rel)!r}; "
                    "a name cannot be both. Upload the folder as a zip, or send each file's relative path in 'paths'."
                )


def _check_size(total: int) -> None:
    limit = settings.DELINEO_MAX_UPLOAD_BYTES
    if total > limit:
        raise UploadError(f"The upload is {_human(total)}; the limit on this server is {_human(limit)}.", status=413)


def _write(upload: UploadedFile, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "xb") as out:
        for chunk in upload.chunks():
            out.write(chunk)


# Archive formats by name and by their first bytes (tar: "ustar" at offset 257).
ARCHIVE_SUFFIXES = (".zip", ".gz", ".tgz", ".tar", ".bz2", ".tbz2", ".xz", ".txz", ".7z", ".rar", ".zst", ".lz4")
ARCHIVE_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"7z\xbc\xaf\x27\x1c", b"Rar!")


def _declared_entries(path: Path) -> int | None:
    """The entry count in a zip's end-of-central-directory record (ZIP64 too), read before
    ``zipfile`` builds one object per entry: a crafted archive can declare millions."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 22 - 0xFFFF))  # the record (22 bytes) and a comment of up to 64 KiB
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            return None
        (count,) = struct.unpack_from("<H", tail, at + 10)
        if count == 0xFFFF and at >= 20 and tail[at - 20 : at - 16] == b"PK\x06\x07":
            (offset,) = struct.unpack_from("<Q", tail, at - 20 + 8)
            f.seek(offset)
            record = f.read(40)
            if len(record) == 40 and record[:4] == b"PK\x06\x06":
                (count,) = struct.unpack_from("<Q", record, 32)
    return count


def _unsafe_name(name: str) -> str | None:
    """Why an entry name could write outside the folder it is unpacked into, or None."""
    text = name.replace("\\", "/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        return "an absolute path"
    if ".." in text.split("/") or "\x00" in text:
        return "a path that points outside the zip"
    return None


def _is_archive(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> bool:
    if member.filename.lower().endswith(ARCHIVE_SUFFIXES):
        return True
    with archive.open(member) as f:
        head = f.read(262)
    return head.startswith(ARCHIVE_MAGIC) or head[257:262] == b"ustar"


def check_zip_members(archive: zipfile.ZipFile, shown_name: str, compressed_size: int) -> list[zipfile.ZipInfo]:
    """Check a zip's directory against the ``DELINEO_ZIP_*`` limits without unpacking it:
    entry count, names (no ``..``, no absolute path), no links, no archive inside, total
    unpacked size and compression ratio. ``zipfile`` never returns more bytes for an entry
    than its directory declares, so these sizes bound what the engine reads.

    Returns:
        The file entries (no directories).
    Raises:
        UploadError: naming the entry and the limit.
    """
    shown = repr(shown_name)
    entries = archive.infolist()
    if len(entries) > settings.DELINEO_ZIP_MAX_ENTRIES:
        raise _too_many_entries(shown_name, len(entries))
    for entry in entries:
        why = _unsafe_name(entry.filename)
        if why:
            raise UploadError(
                f"The zip file {shown} contains {entry.filename!r}, {why}; it was refused for safety. "
                "Zip the folder again with the usual tool of your computer."
            )
        if stat.S_ISLNK(entry.external_attr >> 16):
            raise UploadError(
                f"The zip file {shown} contains {entry.filename!r}, a link to another file rather than a file; "
                "links are refused for safety. Zip the folder again so that it holds the files themselves."
            )
    members = [m for m in entries if not m.is_dir()]
    if not members:
        raise UploadError(f"The zip file {shown} is empty.")
    if any(m.flag_bits & 0x1 for m in members):
        raise UploadError(f"The zip file {shown} is password-protected; upload it without a password.")
    if all(is_nifti_name(m.filename) for m in members):
        raise UploadError(f"The zip file {shown} holds NIfTI files; upload the .nii or .nii.gz file itself instead.")
    unpacked = sum(m.file_size for m in members)
    limit = settings.DELINEO_ZIP_MAX_UNPACKED_BYTES
    if unpacked > limit:
        raise UploadError(
            f"The zip file {shown} unpacks to {_human(unpacked)}; the limit on this server is {_human(limit)}. "
            "Upload one series at a time.",
            status=413,
        )
    ratio = unpacked / max(compressed_size, 1)
    if ratio > settings.DELINEO_ZIP_MAX_RATIO:
        raise UploadError(
            f"The zip file {shown} unpacks to {ratio:.0f} times its size (the limit is "
            f"{settings.DELINEO_ZIP_MAX_RATIO}). Scans do not compress that much, so it was refused as a "
            "possible 'zip bomb'. If it is a genuine scan, upload its folder instead of a zip."
        )
    for member in members:
        if _is_archive(archive, member):
            raise UploadError(
                f"The zip file {shown} contains another archive, {member.filename!r}; archives inside a zip are "
                "not read. Unpack it and upload the DICOM files, or a zip of them, directly."
            )
    return members


def _too_many_entries(shown_name: str, count: int) -> UploadError:
    return UploadError(
        f"The zip file {shown_name!r} holds {count} entries; the limit on this server is "
        f"{settings.DELINEO_ZIP_MAX_ENTRIES}. Upload one series at a time.",
        status=413,
    )


def _check_zip(path: Path, shown_name: str) -> dict:
    if not zipfile.is_zipfile(path):
        raise UploadError(f"{shown_name!r} is not a valid zip file (it may be damaged or incomplete).")
    declared = _declared_entries(path)
    if declared is not None and declared > settings.DELINEO_ZIP_MAX_ENTRIES:
        raise _too_many_entries(shown_name, declared)
    try:
        with zipfile.ZipFile(path) as archive:
            members = check_zip_members(archive, shown_name, path.stat().st_size)
            damaged = archive.testzip()
            if damaged is not None:
                raise UploadError(f"The zip file {shown_name!r} is damaged: {damaged!r} fails its checksum.")
    except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError, zlib.error):
        # Not the exception's text: an OSError's holds the path on the server.
        raise UploadError(
            f"The zip file {shown_name!r} is damaged: it cannot be unpacked (it may be truncated or corrupted)."
        ) from None
    return {"zip_members": len(members)}


# Below this unpacked size the ratio is not checked: a small file cannot exhaust memory,
# and gzip's fixed overhead makes tiny files look highly compressed.
_GZIP_RATIO_FLOOR = 1 << 20


def check_gzip_stream(path: Path, shown_name: str) -> int:
    """Unpack a ``.gz`` file's stream in 1 MiB pieces that are counted and dropped, never
    held together, and stop at ``DELINEO_GZIP_MAX_UNPACKED_BYTES`` or at
    ``DELINEO_GZIP_MAX_RATIO`` times the file's size (a "gzip bomb": a few megabytes that
    unpack to gigabytes), before anything reads the image.

    Returns:
        The unpacked size.
    Raises:
        UploadError: too large unpacked, too compressed, not gzip or damaged.
    """
    compressed = path.stat().st_size
    size_limit = settings.DELINEO_GZIP_MAX_UNPACKED_BYTES
    ratio_limit = settings.DELINEO_GZIP_MAX_RATIO
    allowed = min(size_limit, max(ratio_limit * compressed, _GZIP_RATIO_FLOOR))
    unpacked = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                unpacked += len(chunk)
                if unpacked > allowed:
                    break
    except EOFError:
        raise UploadError(f"{shown_name!r} ends early: its gzip stream is truncated or damaged.") from None
    except (OSError, zlib.error):  # BadGzipFile is an OSError; its text may hold the path
        raise UploadError(f"{shown_name!r} is named .nii.gz but is not gzip-compressed (or is damaged).") from None
    if unpacked > size_limit:
        raise UploadError(
            f"{shown_name!r} unpacks to more than {_human(size_limit)}; the limit on this server is "
            f"{_human(size_limit)}. Ask the administrator to raise the limit if it is a genuine scan.",
            status=413,
        )
    if unpacked > allowed:
        raise UploadError(
            f"{shown_name!r} unpacks to more than {ratio_limit} times its size. Scans do not compress that much, "
            "so it was refused as a possible 'gzip bomb'. If it is a genuine scan, upload it as .nii "
            "(not compressed) instead."
        )
    return unpacked


def _check_nifti(path: Path, shown_name: str) -> dict:
    if path.name.lower().endswith(".gz"):
        check_gzip_stream(path, shown_name)
    try:
        image = nib.load(path)
        shape = tuple(int(n) for n in image.shape)
    except Exception as exc:  # nibabel raises many types for bad headers; their text may hold the path
        raise UploadError(
            f"{shown_name!r} is not a readable NIfTI file: {services.unreadable_nifti_reason(path, exc)}."
        ) from None
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
    _check_nesting(relative)
    for upload, rel in zip(files, relative, strict=True):
        try:
            _write(upload, original.joinpath(*rel.parts))
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
        record = services.deidentify(stored.input_path, directory / "deidentified")
    except services.DeidentificationFailed as exc:
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
                patient=patient_for(owner, entered or services.dicom_patient_id(preflight, found_ids), patient_label),
                name=stored.name,
                input_kind=stored.input_kind,
                input_path=str(stored.input_path.relative_to(settings.MEDIA_ROOT)),
                file_count=stored.file_count,
                size_bytes=stored.size_bytes,
                preflight=info,
                deidentification=deidentification,
            )
    except services.PreflightError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        raise UploadError(f"The upload was not accepted: {exc.message}") from None
    except BaseException:
        if not keep_refused:  # the node keeps what it acknowledged, to be checked again
            shutil.rmtree(directory, ignore_errors=True)
        raise


def _preflight(path: Path, keep_refused: bool) -> dict | None:
    if not keep_refused:
        return services.preflight(path)
    try:
        return services.preflight(path, keep_refused=True)
    except services.PreflightError as exc:  # not even one series could be read
        return {"kind": "dicom", "series": [], "refused": exc.message}
