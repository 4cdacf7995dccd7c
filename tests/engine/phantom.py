"""A synthetic DICOM CT series whose voxels and geometry are known exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_phantom_series(
    directory: Path,
    hu: np.ndarray,
    spacing: tuple[float, float, float] = (1.5, 2.0, 3.0),
    origin: tuple[float, float, float] = (-20.0, -30.0, 50.0),
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    seed: int = 0,
    series_uid: str | None = None,
    signed: bool = False,
    modality: str = "CT",
) -> tuple[list[Path], np.ndarray]:
    """Write ``hu`` (I=columns, J=rows, K=slices) as one file per slice, names shuffled.

    ``spacing`` is (column step, row step, slice step) in mm. ``series_uid`` None draws
    a new Series Instance UID ("" writes an empty one); ``signed`` stores int16 pixels
    with intercept 0 instead of uint16 with intercept -1024. Returns the file paths in
    slice order and the expected LPS affine (voxel (i, j, k) -> mm).
    """
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row, col)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = (
        row * spacing[0],
        col * spacing[1],
        normal * spacing[2],
    )
    affine[:3, 3] = origin
    study, frame = generate_uid(), generate_uid()
    series = generate_uid() if series_uid is None else series_uid
    names = [f"{n:08x}" for n in rng.permutation(10_000_000)[: hu.shape[2]]]  # no extension, random order
    paths = []
    for k in range(hu.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = directory / names[k]
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = (
            CTImageStorage,
            meta.MediaStorageSOPInstanceUID,
        )
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (
            study,
            series,
            frame,
        )
        ds.Modality, ds.PatientName, ds.PatientID = modality, "Phantom^Test", "PH001"
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = (
            "20260101",
            "080000",
            "1",
            "",
        )
        ds.ReferringPhysicianName = ""
        ds.SeriesNumber, ds.InstanceNumber = (
            2,
            hu.shape[2] - k,
        )  # deliberately not slice order
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in (affine @ [0, 0, k, 1])[:3]]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # (between rows, between columns)
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        offset = 0 if signed else 1024
        ds.RescaleSlope, ds.RescaleIntercept = 1, -offset
        stored = (hu[:, :, k].T + offset).astype(np.int16 if signed else np.uint16)  # (rows, columns)
        ds.PixelData = stored.tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths, affine
