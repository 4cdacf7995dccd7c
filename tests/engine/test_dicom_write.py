"""CT series export: voxels and geometry survive our reader and dcm2niix; IOD valid."""

from __future__ import annotations

import zipfile

import nibabel as nib
import numpy as np
import pydicom
import pytest

from engine.io.dicom_series import read_series
from engine.io.dicom_write import (
    DicomWriteError,
    PatientInfo,
    labels_on_series_grid,
    write_ct_series,
    zip_series,
)
from engine.volume import LabelMap, Volume
from tests.dicom_tools import corners_mm, dciodvfy_errors, dcm2niix_canonical

SHAPE = (11, 9, 7)  # (I, J, K), all different so that a transposition would show


def _rotation(a: float, b: float, c: float) -> np.ndarray:
    """Rotation about z, then y, then x (radians)."""
    cz, sz, cy, sy, cx, sx = (
        np.cos(a),
        np.sin(a),
        np.cos(b),
        np.sin(b),
        np.cos(c),
        np.sin(c),
    )
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rx @ ry @ rz


def _affine(axes: np.ndarray, spacing=(1.5, 2.0, 3.0), origin=(12.3, -45.6, 78.9)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = axes @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


# RAS affines, NIfTI style. Right-handed ones must come back voxel for voxel.
RIGHT_HANDED = {
    "axial RAS": _affine(np.eye(3)),
    "axial LPS (DICOM-like, L-P-S voxel axes)": _affine(np.diag([-1.0, -1.0, 1.0])),
    "sagittal (i->P, j->I, k->R)": _affine(np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float)),
    "oblique": _affine(_rotation(0.3, -0.2, 0.15)),
}
LEFT_HANDED = {
    "axial LAS (dcm2niix style)": _affine(np.diag([-1.0, 1.0, 1.0])),
    "oblique, left-handed": _affine(_rotation(0.3, -0.2, 0.15) @ np.diag([1.0, -1.0, 1.0])),
}


@pytest.fixture
def hu() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(-1024, 3000, size=SHAPE).astype(np.float32)


def _same_geometry(a: np.ndarray, b: np.ndarray, shape) -> None:
    """Every corner voxel centre within 0.01 mm."""
    np.testing.assert_allclose(corners_mm(a, shape), corners_mm(b, shape), atol=0.01)


@pytest.mark.parametrize("name", sorted(RIGHT_HANDED))
def test_right_handed_volume_reads_back_voxel_for_voxel(name, hu, tmp_path):
    affine = RIGHT_HANDED[name]
    written = write_ct_series(Volume(hu, affine), tmp_path / "ct")
    back = read_series(tmp_path / "ct")
    np.testing.assert_array_equal(back.volume.array, hu)
    _same_geometry(back.volume.affine, affine, SHAPE)
    np.testing.assert_array_equal(written.series.volume.array, hu)
    _same_geometry(written.series.volume.affine, affine, SHAPE)
    assert [s.sop_instance_uid for s in back.slices] == [s.sop_instance_uid for s in written.series.slices]
    assert back.series_instance_uid == written.series.series_instance_uid
    assert back.frame_of_reference_uid == written.series.frame_of_reference_uid
    assert back.study_instance_uid == written.series.study_instance_uid


@pytest.mark.parametrize("name", sorted(LEFT_HANDED))
def test_left_handed_volume_is_written_with_rows_reversed(name, hu, tmp_path):
    affine = LEFT_HANDED[name]
    written = write_ct_series(Volume(hu, affine), tmp_path / "ct")
    back = read_series(tmp_path / "ct")
    # The series as returned is the series as any reader assembles it...
    np.testing.assert_array_equal(back.volume.array, written.series.volume.array)
    _same_geometry(back.volume.affine, written.series.volume.affine, SHAPE)
    # ...and it is the input with its rows reversed: the same voxels in patient space.
    np.testing.assert_array_equal(back.volume.array, hu[:, ::-1, :])
    flip = np.eye(4)
    flip[1, 1], flip[1, 3] = -1, SHAPE[1] - 1
    _same_geometry(back.volume.affine, affine @ flip, SHAPE)
    assert np.linalg.det(back.affine_lps[:3, :3]) > 0


def test_standard_axial_orientation_for_an_las_volume(hu, tmp_path):
    written = write_ct_series(Volume(hu, LEFT_HANDED["axial LAS (dcm2niix style)"]), tmp_path / "ct")
    ds = pydicom.dcmread(written.paths[0])
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in ds.PixelSpacing] == [
        2.0,
        1.5,
    ]  # (between rows, between columns)
    assert float(ds.SliceThickness) == 3.0
    assert (ds.Rows, ds.Columns) == (SHAPE[1], SHAPE[0])


@pytest.mark.parametrize("name", sorted(RIGHT_HANDED) + sorted(LEFT_HANDED))
def test_dcm2niix_reads_the_same_image(name, hu, tmp_path):
    affine = {**RIGHT_HANDED, **LEFT_HANDED}[name]
    write_ct_series(Volume(hu, affine), tmp_path / "ct")
    theirs = dcm2niix_canonical(tmp_path / "ct", tmp_path / "dcm2niix")
    ours = nib.as_closest_canonical(nib.Nifti1Image(hu, affine))
    np.testing.assert_array_equal(np.asarray(theirs.dataobj), np.asarray(ours.dataobj))
    _same_geometry(theirs.affine, ours.affine, SHAPE)


def test_dciodvfy_reports_no_errors(hu, tmp_path):
    written = write_ct_series(Volume(hu, RIGHT_HANDED["oblique"]), tmp_path / "ct")
    for path in (written.paths[0], written.paths[-1]):
        errors = dciodvfy_errors(path)
        assert not errors, "\n".join(errors)


def test_hu_rounded_and_clipped_to_int16(tmp_path):
    hu = np.zeros(SHAPE, np.float32)
    hu[0, 0, 0], hu[1, 0, 0], hu[2, 0, 0], hu[3, 0, 0] = 12.4, -7.6, 40000.0, -40000.0
    write_ct_series(Volume(hu, RIGHT_HANDED["axial RAS"]), tmp_path / "ct")
    back = read_series(tmp_path / "ct")
    assert list(back.volume.array[:4, 0, 0]) == [12.0, -8.0, 32767.0, -32768.0]
    ds = pydicom.dcmread(next((tmp_path / "ct").iterdir()))
    assert (
        ds.PixelRepresentation,
        float(ds.RescaleSlope),
        float(ds.RescaleIntercept),
    ) == (1, 1.0, 0.0)


def test_uids_patient_and_zip(hu, tmp_path):
    patient = PatientInfo(
        name="Doe^Jane",
        patient_id="P123",
        birth_date="19700101",
        sex="F",
        position="HFS",
    )
    written = write_ct_series(Volume(hu, RIGHT_HANDED["axial RAS"]), tmp_path / "ct", patient)
    datasets = [pydicom.dcmread(p) for p in written.paths]
    assert len({ds.SOPInstanceUID for ds in datasets}) == SHAPE[2]
    for ds in datasets:
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.Modality == "CT"
        assert (ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex) == (
            "Doe^Jane",
            "P123",
            "19700101",
            "F",
        )
        assert ds.PatientPosition == "HFS" and ds.Manufacturer == "Delineo"
        assert ds.StudyInstanceUID == written.series.study_instance_uid
    default = write_ct_series(Volume(hu, RIGHT_HANDED["axial RAS"]), tmp_path / "anon")
    ds = pydicom.dcmread(default.paths[0])
    assert ds.PatientName == "ANONYMOUS^" and ds.PatientID.startswith("DELINEO-")
    assert default.series.study_instance_uid != written.series.study_instance_uid
    archive = zip_series(written, tmp_path / "ct_dicom.zip")
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == [f"ct/{p.name}" for p in written.paths]
    zipped = read_series(archive)
    np.testing.assert_array_equal(zipped.volume.array, hu)


def test_rewriting_replaces_the_folder(hu, tmp_path):
    out = tmp_path / "job"
    write_ct_series(Volume(hu, RIGHT_HANDED["axial RAS"]), out / "ct")
    second = write_ct_series(Volume(hu[:, :, :4], RIGHT_HANDED["axial RAS"]), out / "ct")
    assert sorted((out / "ct").iterdir()) == sorted(second.paths)
    assert [p.name for p in out.iterdir()] == ["ct"]  # no temporary folder left


def test_labels_follow_the_written_grid(tmp_path, hu):
    affine = LEFT_HANDED["axial LAS (dcm2niix style)"]
    written = write_ct_series(Volume(hu, affine), tmp_path / "ct")
    labels = np.zeros(SHAPE, np.uint8)
    labels[2:5, 1:3, 4] = 2
    moved = labels_on_series_grid(LabelMap(labels, affine), written.series)
    np.testing.assert_array_equal(moved.affine, written.series.volume.affine)
    # Every labelled voxel sits at the same patient position on both grids.
    before = (affine @ np.column_stack([np.argwhere(labels), np.ones(6)]).T)[:3].T
    after = (moved.affine @ np.column_stack([np.argwhere(moved.array), np.ones(6)]).T)[:3].T
    np.testing.assert_allclose(sorted(map(tuple, before)), sorted(map(tuple, after)), atol=1e-6)
    with pytest.raises(DicomWriteError, match="not on the grid"):
        labels_on_series_grid(LabelMap(labels[:, :, :3], affine), written.series)


def test_shear_is_refused(hu, tmp_path):
    sheared = RIGHT_HANDED["axial RAS"].copy()
    sheared[0, 1] = 0.2  # column direction leans along x
    with pytest.raises(DicomWriteError, match="shear"):
        write_ct_series(Volume(hu, sheared), tmp_path / "ct")
    assert not (tmp_path / "ct").exists()


def test_non_finite_values_are_refused(hu, tmp_path):
    hu[0, 0, 0] = np.nan
    with pytest.raises(DicomWriteError, match="NaN"):
        write_ct_series(Volume(hu, RIGHT_HANDED["axial RAS"]), tmp_path / "ct")
