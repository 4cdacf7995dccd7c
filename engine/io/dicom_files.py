"""Find every DICOM object in an upload: a folder (nested, any file names), a zip or one file.

Files that are not DICOM are skipped with a note naming them, DICOMDIR is ignored (it
indexes files, it holds no images), and the objects are split into images (CT, MR, PET
with pixel data) and the rest (RTSTRUCT, SEG, RTPLAN, RTDOSE, ...), which are kept for
the pre-flight report and for the RTSTRUCT import.
"""

from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom import uid
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from engine.errors import InputError

IMAGE_MODALITIES = {"CT", "MR", "PT"}
# The storage SOP classes of CT, MR and PET images (PS3.4 B.5): such an object without
# pixel data is a damaged image (a truncated slice), not another kind of object.
IMAGE_SOP_CLASSES = {
    uid.CTImageStorage,
    uid.EnhancedCTImageStorage,
    uid.LegacyConvertedEnhancedCTImageStorage,
    uid.MRImageStorage,
    uid.EnhancedMRImageStorage,
    uid.LegacyConvertedEnhancedMRImageStorage,
    uid.PositronEmissionTomographyImageStorage,
    uid.EnhancedPETImageStorage,
    uid.LegacyConvertedEnhancedPETImageStorage,
}
_DICM_OFFSET = 128  # PS3.10 7.1: a 128-byte preamble, then "DICM"
PIXEL_DATA = Tag(0x7FE0, 0x0010)
# Headers only: values longer than this are left in the file until read. Any but Pixel
# Data are read at once (_read_dataset); a slice's pixels (8 KiB and more) stay there.
_DEFER_BYTES = 4096


class DicomFilesError(InputError):
    """An upload whose container itself is unusable (for example an unsafe zip entry)."""


@dataclass
class DicomUpload:
    """The DICOM objects of one upload.

    ``images`` are CT/MR/PET instances with pixel data (``ds.filename`` is the name
    inside the upload); ``others`` are every other DICOM object; ``skipped`` holds one
    note per file that was ignored, with the reason; ``damaged`` one note per file that
    is DICOM (it starts with the PS3.10 preamble and "DICM", or is named ``*.dcm``) but
    cannot be read, or is a CT, MR or PET image without pixel data: a truncated slice,
    whose series may be missing a slice.
    """

    images: list[pydicom.Dataset] = field(default_factory=list)
    others: list[pydicom.Dataset] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    files: int = 0


def iter_sources(path: Path) -> Iterator[tuple[str, Path | BinaryIO]]:
    """Yield (name, path-or-stream) for every file in a folder (recursive), a zip or a file."""
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            yield str(f.relative_to(path)), f
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                name = info.filename
                if name.startswith("/") or ".." in Path(name).parts:
                    raise DicomFilesError(f"zip entry {name!r} has an unsafe path")
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise DicomFilesError(f"zip entry {name!r} is a symbolic link")
                try:
                    data = zf.read(info)
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                    raise DicomFilesError(f"the zip file is damaged: entry {name!r} cannot be unpacked") from exc
                yield name, io.BytesIO(data)
    else:
        yield path.name, path


def why_unreadable(exc: BaseException) -> str:
    """What a physician can do with a parser's exception: the file ends early, or not."""
    if isinstance(exc, EOFError | struct.error) or "end of file" in str(exc).lower():
        return "it ends early (truncated, for example an interrupted copy)"
    return "its header is damaged"


def claims_dicom(name: str, source: Path | BinaryIO) -> bool:
    """Named ``*.dcm`` or starting with the PS3.10 preamble and "DICM"."""
    if name.lower().endswith(".dcm"):
        return True
    if isinstance(source, Path):
        with open(source, "rb") as f:
            f.seek(_DICM_OFFSET)
            return f.read(4) == b"DICM"
    source.seek(_DICM_OFFSET)
    magic = source.read(4) == b"DICM"
    source.seek(0)
    return magic


def _source_size(source: Path | BinaryIO) -> int:
    if isinstance(source, Path):
        return source.stat().st_size
    return source.seek(0, io.SEEK_END)


def _read_dataset(source: Path | BinaryIO, pixels: bool = True) -> pydicom.Dataset:
    """pydicom's dataset with every top-level attribute decoded now, so that a value
    that cannot be decoded fails here (as an unreadable file) rather than later.

    With ``pixels=False`` the Pixel Data value is left in the file (pydicom's deferred
    read), with its length cut to the bytes the file holds, as a full read would give
    them: see ``pixel_data_length``. Every other value is read.
    """
    if pixels:
        ds = pydicom.dcmread(source)
        for _ in ds:  # iterating converts each raw element (pixel data stays bytes)
            pass
        return ds
    ds = pydicom.dcmread(source, defer_size=_DEFER_BYTES)
    for tag in list(ds.keys()):
        if tag != PIXEL_DATA:
            ds[tag]  # converts a raw element, and reads a deferred one now
    element = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if isinstance(element, RawDataElement) and element.value is None:
        held = max(_source_size(source) - element.value_tell, 0)
        ds[PIXEL_DATA] = element._replace(length=min(element.length, held))
    ds.buffer = None  # a zip entry's bytes: kept for a deferred read, which never comes
    return ds


def pixel_data_length(ds: pydicom.Dataset) -> int:
    """Bytes of Pixel Data in ``ds``'s file (0 without Pixel Data), without reading a
    value that ``read_upload(..., pixels=False)`` left in the file."""
    element = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if element is None:
        return 0
    if isinstance(element, RawDataElement) and element.value is None:
        return int(element.length)  # deferred: its length is what the file holds
    return len(element.value or b"")


def read_upload(path: str | Path, pixels: bool = True) -> DicomUpload:
    """Read every DICOM object in ``path`` (folder, zip or single file).

    ``pixels=False`` reads headers only: each image's Pixel Data stays in its file
    (``pixel_data_length`` tells its size), so that memory does not grow with the
    upload (the pre-flight check of a 300-slice CT holds no slice's pixels). The
    datasets are then for their headers: an image's pixels cannot be decoded, nor a
    value over 4 KiB inside a sequence (an RTSTRUCT's Contour Data) be read; read the
    upload with ``pixels=True`` for those.

    A file pydicom cannot read is a note in ``skipped``, and also in ``damaged`` when it
    starts like a DICOM file; whatever pydicom raises (it raises many types on damaged
    input) never escapes.

    Raises:
        DicomFilesError: a zip entry with an absolute path or ``..``, a symbolic link, or
            one that cannot be unpacked (damaged).
        zipfile.BadZipFile: a corrupt zip archive.
    """
    upload = DicomUpload()
    for name, source in iter_sources(Path(path)):
        upload.files += 1
        if Path(name).name.upper() == "DICOMDIR":
            upload.skipped.append(f"{name}: DICOMDIR ignored (an index, not an image)")
            continue
        try:
            ds = _read_dataset(source, pixels)
            is_image = "PixelData" in ds and ds.get("Modality") in IMAGE_MODALITIES
            has_sop_class = "SOPClassUID" in ds
            meta = getattr(ds, "file_meta", None) or pydicom.Dataset()
            sop_classes = {
                str(ds.get("SOPClassUID", "")),
                str(meta.get("MediaStorageSOPClassUID", "")),
            } - {""}
        # pydicom raises many types (struct.error, ...) on damage
        except Exception as exc:  # noqa: BLE001
            if claims_dicom(name, source):
                note = f"{name}: a damaged DICOM file, not read: {why_unreadable(exc)}"
                upload.damaged.append(note)
            else:
                note = f"{name}: skipped, not a DICOM file"
            upload.skipped.append(note)
            continue
        ds.filename = name
        # pydicom stops quietly at the end of a file cut between (or inside) attributes.
        if (not sop_classes and not is_image) or (sop_classes & IMAGE_SOP_CLASSES and "PixelData" not in ds):
            what = "an image without pixel data" if sop_classes else "no SOP Class UID"
            upload.damaged.append(f"{name}: a damaged DICOM file ({what}): truncated or damaged")
            upload.skipped.append(upload.damaged[-1])
        elif is_image:
            upload.images.append(ds)
        elif has_sop_class:
            upload.others.append(ds)
        else:
            upload.skipped.append(f"{name}: skipped, a DICOM file without SOP Class UID")
    return upload


def damaged_files_message(upload: DicomUpload) -> str | None:
    """Why an upload holding damaged DICOM files is refused, or None when it holds none.

    A damaged file may be a slice of the series: assembling the rest would give a volume
    with a slice missing, which the spacing check cannot see at either end of the stack.
    """
    if not upload.damaged:
        return None
    more = len(upload.damaged) - 1
    return (
        upload.damaged[0]
        + (f" (and {more} more damaged file{'s' if more > 1 else ''})" if more else "")
        + ". A series with a damaged file may be missing a slice: upload the series "
        "again from its source, or leave that file out if it is not part of the series."
    )
