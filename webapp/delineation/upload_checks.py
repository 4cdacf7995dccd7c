"""The checks of an upload that need neither the engine nor its files unpacked: paths of a
folder upload, the directory of a zip (:func:`check_zip_members`), the gzip stream of a
NIfTI file, sizes. A refusal is an :class:`UploadError` with a message for the user."""

from __future__ import annotations

import gzip
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import nibabel as nib
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile

from webapp.delineation import engine_client


class UploadError(Exception):
    """An upload that cannot be accepted; ``message`` is shown to the user as is."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


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


def check_nesting(relative: Sequence[PurePosixPath]) -> None:
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


def check_size(total: int) -> None:
    limit = settings.DELINEO_MAX_UPLOAD_BYTES
    if total > limit:
        raise UploadError(f"The upload is {_human(total)}; the limit on this server is {_human(limit)}.", status=413)


def write_upload(upload: UploadedFile, target: Path) -> None:
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


def check_zip(path: Path, shown_name: str) -> dict:
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


def check_nifti(path: Path, shown_name: str) -> dict:
    if path.name.lower().endswith(".gz"):
        check_gzip_stream(path, shown_name)
    try:
        image = nib.load(path)
        shape = tuple(int(n) for n in image.shape)
    except Exception as exc:  # nibabel raises many types for bad headers; their text may hold the path
        raise UploadError(
            f"{shown_name!r} is not a readable NIfTI file: {engine_client.unreadable_nifti_reason(path, exc)}."
        ) from None
    if len(shape) < 3 or min(shape[:3]) < 1 or any(n != 1 for n in shape[3:]):
        raise UploadError(f"{shown_name!r} has shape {shape}; a 3D image is needed.")
    return {"nifti_shape": list(shape[:3])}
