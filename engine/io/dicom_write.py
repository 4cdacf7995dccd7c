"""Write a ``Volume`` (e.g. a CT read from NIfTI) as a DICOM CT image series.

Follows DICOM PS3.3 A.3 (CT Image IOD): Patient, General Study, General Series, Frame of
Reference, General Equipment, General Image, Image Plane, Image Pixel, CT Image, VOI LUT
and SOP Common modules, one single-frame CT Image Storage file per slice, so that a
treatment planning system can import the image together with an RTSTRUCT or SEG that
references it.

Geometry (PS3.3 C.7.6.2, Image Plane): voxel (i, j, k) = (column, row, slice). The RAS
affine is converted to LPS; Image Orientation (Patient) is the unit I axis (along a row)
then the unit J axis (down a column); Pixel Spacing is (J step, I step) = (between rows,
between columns) in mm; Image Position (Patient) is voxel (0, 0, k); Slice Thickness is
the distance between slices (a NIfTI file records no thickness). Any orientation
(axial, sagittal, oblique) is written as is; an affine with shear has no DICOM
equivalent and is refused.

Readers (``engine.io.dicom_series``, dcm2niix, planning systems) stack slices along the
normal row x column. A left-handed grid (most NIfTI files converted from DICOM, e.g.
L-A-S) would be read back with its slices reversed, so its rows are written in reverse
order instead (I, -J, K): the written series is then a standard right-handed one, e.g.
Image Orientation (1, 0, 0, 0, 1, 0) for an L-A-S axial volume. The returned
``DicomSeries`` describes the grid as written; ``labels_on_series_grid`` brings a label
map from the input grid onto it.

Pixels are stored as signed 16-bit integers with Rescale Slope 1 and Intercept 0, so
HU = stored value: exact for integer HU, other values are rounded to the nearest
integer, and values outside [-32768, 32767] are clipped.

New Study, Series, Frame of Reference and SOP Instance UIDs are generated (pydicom);
patient attributes come from the caller (``PatientInfo``), by default anonymous
placeholders.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

import engine
from engine.errors import ExportError
from engine.io.atomic import write_atomically
from engine.io.dicom_series import LPS_TO_RAS, DicomSeries, SliceRef
from engine.volume import LabelMap, Volume, hu_as_int16

# Largest |cosine| between two voxel axes still taken as orthogonal (about 0.006 degrees):
# float32 NIfTI affines are orthogonal to about 1e-7; anything larger is a real shear.
SHEAR_TOLERANCE = 1e-4


class DicomWriteError(ExportError):
    """A volume that cannot be written as a DICOM image series; the message says why."""


@dataclass(frozen=True)
class PatientInfo:
    """Patient and study attributes for an exported series (PS3.3 C.7.1.1, C.7.2.1).

    Defaults are anonymous placeholders: name ``ANONYMOUS^``, an empty birth date and sex,
    and a Patient ID ``DELINEO-`` + 8 random hex digits, new for every export, so that a
    planning system never merges two unrelated exports into one patient.
    """

    name: str = "ANONYMOUS^"  # one component; the caret says so (PS3.5 6.2.1)
    patient_id: str = ""
    birth_date: str = ""  # YYYYMMDD or empty
    sex: str = ""  # M, F, O or empty
    position: str = ""  # Patient Position (HFS, FFS, ...); empty: unknown (type 2)


@dataclass(frozen=True)
class WrittenSeries:
    """A written series: ``paths[k]`` holds ``series.slices[k]`` (voxel index K = k)."""

    series: DicomSeries
    paths: list[Path]
    directory: Path


def _ds_values(values: Sequence[float]) -> list[str]:
    """Decimal Strings of at most 16 characters (PS3.5 6.2), as precise as that allows."""
    return [format_number_as_ds(float(v)) for v in values]


def _written_grid(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The (I, J, K) array and LPS affine to write: right-handed, shear refused."""
    affine_lps = LPS_TO_RAS @ np.asarray(volume.affine, dtype=np.float64)
    axes = affine_lps[:3, :3]
    units = axes / np.linalg.norm(axes, axis=0)
    for a, b, names in ((0, 1, "I, J"), (0, 2, "I, K"), (1, 2, "J, K")):
        cosine = float(units[:, a] @ units[:, b])
        if abs(cosine) > SHEAR_TOLERANCE:
            angle = float(np.degrees(np.arccos(np.clip(abs(cosine), 0, 1))))
            raise DicomWriteError(
                f"the image affine has shear (voxel axes {names} at {angle:.3f} degrees, "
                "not 90): a DICOM image series cannot represent it; resample the image first"
            )
    array = volume.array
    if np.linalg.det(axes) < 0:
        # Reverse the rows so that row x column points along increasing K (see module doc).
        n_rows = array.shape[1]
        array = array[:, ::-1, :]
        flip = np.eye(4)
        flip[1, 1], flip[1, 3] = -1.0, n_rows - 1
        affine_lps = affine_lps @ flip
    return array, affine_lps


def _base_dataset(
    patient: PatientInfo,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    description: str,
    now: dt.datetime,
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: patient names may not be ASCII
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]  # CT value 3: cross-sectional
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "Delineo"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = description
    ds.SeriesDescription = description
    ds.ManufacturerModelName = "Delineo"
    ds.SoftwareVersions = f"delineo {engine.__version__}"
    ds.DerivationDescription = "converted from NIfTI by Delineo; HU = stored value"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id or f"DELINEO-{uuid.uuid4().hex[:8].upper()}"
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.KVP = ""
    ds.PatientPosition = patient.position
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.Laterality = ""  # type 2C: the body part is unknown, so is its laterality
    ds.AcquisitionNumber = ""
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1  # signed: HU below zero are stored as they are
    ds.WindowCenter = "40"  # soft tissue, a display default only
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    return ds


def _replace_directory(tmp: Path, directory: Path) -> None:
    """Put the finished ``tmp`` folder at ``directory``, replacing an earlier export."""
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)


def write_ct_series(
    volume: Volume,
    directory: str | os.PathLike,
    patient: PatientInfo | None = None,
    description: str = "Delineo CT export",
) -> WrittenSeries:
    """Write ``volume`` (float (I, J, K) in HU, RAS affine in mm) as CT slices in ``directory``.

    One file per slice, ``CT_0001.dcm`` ... in slice order; ``directory`` is replaced as a
    whole (written under a temporary name, then renamed), so it never mixes two exports.
    Returns the series as written (same voxels and affine as ``volume``, except rows
    reversed for a left-handed grid: see the module doc) with its UIDs and positions.

    Raises:
        DicomWriteError: the affine has shear, or the array holds NaN or infinite values.
    """
    directory = Path(directory)
    if not np.all(np.isfinite(volume.array)):
        raise DicomWriteError("the image holds NaN or infinite values")
    array, affine_lps = _written_grid(volume)
    stored = hu_as_int16(array)
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    row_dir, col_dir = affine_lps[:3, 0] / spacing[0], affine_lps[:3, 1] / spacing[1]
    patient = patient or PatientInfo()
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    base = _base_dataset(patient, study_uid, series_uid, frame_uid, description, dt.datetime.now())
    base.ImageOrientationPatient = _ds_values([*row_dir, *col_dir])
    base.PixelSpacing = _ds_values([spacing[1], spacing[0]])  # (rows, columns)
    base.SliceThickness = format_number_as_ds(float(spacing[2]))
    base.Rows, base.Columns = int(stored.shape[1]), int(stored.shape[0])

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    paths, slices, header = [], [], None
    try:
        for k in range(stored.shape[2]):
            ds = copy.deepcopy(base)  # Dataset.copy() shares the elements' dict
            ds.SOPInstanceUID = generate_uid()
            ds.InstanceNumber = k + 1
            position = (affine_lps @ np.array([0.0, 0.0, k, 1.0]))[:3]
            ds.ImagePositionPatient = _ds_values(position)
            if header is None:
                header = copy.deepcopy(ds)
            # (I=column, J=row) -> (row, column), little endian as the transfer syntax says.
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<i2").tobytes()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
            ds.file_meta = meta
            name = f"CT_{k + 1:04d}.dcm"
            ds.save_as(tmp / name, enforce_file_format=True)
            os.chmod(tmp / name, 0o640)
            paths.append(directory / name)
            slices.append(
                SliceRef(
                    CTImageStorage,
                    ds.SOPInstanceUID,
                    tuple(float(v) for v in ds.ImagePositionPatient),
                )
            )
        os.chmod(tmp, 0o750)
        _replace_directory(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    # The positions as written (Decimal Strings), so the affine is what a reader gets.
    written_affine = affine_lps.copy()
    written_affine[:3, 3] = slices[0].position_lps
    exported = {"source": "dicom-export", "modality": "CT", "notes": []}
    series = DicomSeries(
        Volume(stored.astype(np.float32), LPS_TO_RAS @ written_affine, meta=exported),
        slices,
        cast(pydicom.Dataset, header),  # set from the first slice written
    )
    return WrittenSeries(series, paths, directory)


def zip_series(written: WrittenSeries, zip_path: str | os.PathLike) -> Path:
    """Zip the series' files as ``<folder name>/CT_0001.dcm`` ... (deflate; atomic write).

    Entries carry a fixed date (1980-01-01), not the files' modification times, so the
    same series always gives the same archive (a job run again gives the same checksums).
    """

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in written.paths:
                entry = zipfile.ZipInfo(f"{written.directory.name}/{path.name}", date_time=(1980, 1, 1, 0, 0, 0))
                entry.external_attr = 0o640 << 16
                archive.writestr(entry, path.read_bytes(), zipfile.ZIP_DEFLATED)

    return write_atomically(zip_path, write)


def labels_on_series_grid(labels: LabelMap, series: DicomSeries) -> LabelMap:
    """``labels`` (I, J, K) moved onto ``series``' grid by axis flips and permutations only.

    For a label map on the grid of the volume given to ``write_ct_series``: the written
    grid may have its rows reversed. No interpolation ever happens.

    Raises:
        DicomWriteError: the two grids are not the same voxels in another axis order.
    """
    target = series.volume.affine
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(labels.affine),
        nib.orientations.io_orientation(target),
    )
    array = nib.orientations.apply_orientation(labels.array, transform)
    affine = labels.affine @ nib.orientations.inv_ornt_aff(transform, labels.array.shape)
    if array.shape != series.volume.array.shape or not np.allclose(affine, target, atol=1e-2):
        raise DicomWriteError("the label map is not on the grid of the written series")
    return LabelMap(np.ascontiguousarray(array), target)
