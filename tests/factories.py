"""Small synthetic inputs made in the test code: a NIfTI volume, a DICOM CT series, zips."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def nifti_bytes(shape=(16, 16, 8), spacing=(2.0, 2.0, 3.0), gz: bool = True, seed: int = 0) -> bytes:
    """A small int16 CT-like NIfTI (HU), RAS affine."""
    rng = np.random.default_rng(seed)
    data = rng.integers(-1000, 1000, size=shape, dtype=np.int16)
    image = nib.Nifti1Image(data, np.diag([*spacing, 1.0]))
    raw = image.to_bytes()
    if not gz:
        return raw
    import gzip

    return gzip.compress(raw)


def dicom_series(
    directory: Path, slices: int = 8, size: int = 16, seed: int = 0, patient_id: str = "PHANTOM1"
) -> list[Path]:
    """Write a small axial CT series (one file per slice) into ``directory``; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = directory / f"IM{k:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "CT"
        ds.PatientName, ds.PatientID = "Test^Phantom", patient_id
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", ""
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-15.0, -15.0, 3.0 * k]
        ds.PixelSpacing = [2.0, 2.0]
        ds.SliceThickness = 3.0
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = rng.integers(0, 2000, size=(size, size), dtype=np.int16).tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def dicom_zip_bytes(tmp: Path, folder: str = "CT", patient_id: str = "PHANTOM1") -> bytes:
    paths = dicom_series(tmp / folder, patient_id=patient_id)
    return zip_bytes({f"{folder}/{p.name}": p.read_bytes() for p in paths})


def read_dataset(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path)


def dicom_zip_with_rtstruct(tmp: Path, roi_names: tuple[str, ...] = ("Brainstem",)) -> bytes:
    """A zip of a small CT series (``dicom_series``) and an RTSTRUCT drawn on it: one box
    per ROI name, built by the engine's exporter (``engine.io.rtstruct.build_rtstruct``)."""
    from engine.io.dicom_series import read_series
    from engine.io.rtstruct import build_rtstruct
    from engine.structure import Structure
    from engine.volume import LabelMap

    paths = dicom_series(tmp / "CT")
    series = read_series(tmp / "CT")
    labels = np.zeros(series.volume.array.shape, np.uint8)
    structures = []
    for i, name in enumerate(roi_names):
        labels[2 + 5 * i : 6 + 5 * i, 4:10, 2:6] = i + 1
        structures.append(Structure(i + 1, name, (255, 0, 0), "ORGAN"))
    rtstruct = build_rtstruct(LabelMap(labels, series.volume.affine), series, structures, "test", "0" * 64)
    rtstruct.save_as(tmp / "RS.dcm", enforce_file_format=True)
    files = {f"CT/{p.name}": p.read_bytes() for p in paths}
    return zip_bytes({**files, "RS/RS.dcm": (tmp / "RS.dcm").read_bytes()})
