"""One entry point for every input a user can give: a DICOM folder, a zip of one, or NIfTI."""

from __future__ import annotations

import zipfile
from pathlib import Path

from engine.errors import InputError
from engine.io.dicom_files import DicomFilesError
from engine.io.dicom_series import DicomSeries, DicomSeriesError, read_series
from engine.io.nifti import NiftiError, read_volume
from engine.volume import Volume


def is_nifti(path: Path) -> bool:
    name = Path(path).name.lower()
    return name.endswith((".nii", ".nii.gz"))


def read_input(path: str | Path, series: str | None = None) -> tuple[Volume, DicomSeries | None]:
    """Read ``path`` (folder or zip of DICOM files, a single DICOM file, or .nii/.nii.gz).

    ``series`` picks one DICOM image series by its key (``python -m engine info`` lists
    them); it is needed only when the upload holds several usable series.

    Returns (volume, series): ``series`` is the assembled DICOM series (for RTSTRUCT
    export) or None for NIfTI input. ``volume.array`` is float32 (I, J, K), HU for CT.

    Raises:
        InputError: the path does not exist or cannot be made one 3D volume.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path.name}: no such file or folder")
    try:
        if is_nifti(path):
            return read_volume(path), None
        if path.is_file() and not zipfile.is_zipfile(path) and path.suffix.lower() == ".zip":
            raise InputError(f"{path.name}: not a valid zip archive")
        dicom = read_series(path, series)
        return dicom.volume, dicom
    except (DicomSeriesError, DicomFilesError, NiftiError) as exc:
        raise InputError(str(exc)) from exc
    except zipfile.BadZipFile as exc:
        raise InputError(f"{path.name}: not a valid zip archive ({exc})") from exc
