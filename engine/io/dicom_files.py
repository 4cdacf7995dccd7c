"""Find every DICOM object in an upload: a folder (nested, any file names), a zip or one file.

Files that are not DICOM are skipped with a note naming them, DICOMDIR is ignored (it
indexes files, it holds no images), and the objects are split into images (CT, MR, PET
with pixel data) and the rest (RTSTRUCT, SEG, RTPLAN, RTDOSE, ...), which are kept for
the pre-flight report and for the RTSTRUCT import.
"""

from __future__ import annotations

import io
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.errors import InvalidDicomError

IMAGE_MODALITIES = {"CT", "MR", "PT"}
# What pydicom raises for a file that is not (readable) DICOM.
UNREADABLE_DICOM = (
    InvalidDicomError,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    TypeError,
)


class DicomFilesError(ValueError):
    """An upload whose container itself is unusable (for example an unsafe zip entry)."""


@dataclass
class DicomUpload:
    """The DICOM objects of one upload.

    ``images`` are CT/MR/PET instances with pixel data (``ds.filename`` is the name
    inside the upload); ``others`` are every other DICOM object; ``skipped`` holds one
    note per file that was ignored, with the reason.
    """

    images: list[pydicom.Dataset] = field(default_factory=list)
    others: list[pydicom.Dataset] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
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
                yield name, io.BytesIO(zf.read(info))
    else:
        yield path.name, path


def read_upload(path: str | Path) -> DicomUpload:
    """Read every DICOM object in ``path`` (folder, zip or single file).

    Raises:
        DicomFilesError: a zip entry with an absolute path or ``..``, or a symbolic link.
        zipfile.BadZipFile: a corrupt zip archive.
    """
    upload = DicomUpload()
    for name, source in iter_sources(Path(path)):
        upload.files += 1
        if Path(name).name.upper() == "DICOMDIR":
            upload.skipped.append(f"{name}: DICOMDIR ignored (an index, not an image)")
            continue
        try:
            ds = pydicom.dcmread(source)
        except UNREADABLE_DICOM as exc:
            upload.skipped.append(
                f"{name}: skipped, not a DICOM file ({type(exc).__name__})"
            )
            continue
        ds.filename = name
        if "PixelData" in ds and ds.get("Modality") in IMAGE_MODALITIES:
            upload.images.append(ds)
        elif "SOPClassUID" in ds:
            upload.others.append(ds)
        else:
            upload.skipped.append(
                f"{name}: skipped, a DICOM file without SOP Class UID"
            )
    return upload
