"""DICOM series assembly: voxel order, affine, rescale and refusals."""

from __future__ import annotations

import stat
import zipfile

import numpy as np
import pydicom
import pytest

from engine.errors import InputError
from engine.io.dicom_series import LPS_TO_RAS, read_series
from engine.io.reader import read_input
from tests.engine.phantom import write_phantom_series


@pytest.fixture
def hu():
    rng = np.random.default_rng(1)
    return rng.integers(-1000, 1500, size=(12, 9, 7)).astype(np.float32)


def test_voxels_and_affine_match_the_written_series(tmp_path, hu):
    _, affine_lps = write_phantom_series(tmp_path / "ct", hu)
    series = read_series(tmp_path / "ct")
    np.testing.assert_array_equal(series.volume.array, hu)
    np.testing.assert_allclose(series.volume.affine, LPS_TO_RAS @ affine_lps, atol=1e-4)
    assert series.volume.spacing == pytest.approx((1.5, 2.0, 3.0))


def test_slices_are_ordered_by_position_not_instance_number(tmp_path, hu):
    paths, _ = write_phantom_series(tmp_path / "ct", hu)
    series = read_series(tmp_path / "ct")
    expected = [str(pydicom.dcmread(p).SOPInstanceUID) for p in paths]
    assert [s.sop_instance_uid for s in series.slices] == expected


def test_oblique_orientation_goes_into_the_affine(tmp_path, hu):
    c, s = np.cos(0.3), np.sin(0.3)
    orientation = (c, s, 0.0, -s, c, 0.0)
    _, affine_lps = write_phantom_series(tmp_path / "ct", hu, orientation=orientation)
    series = read_series(tmp_path / "ct")
    np.testing.assert_allclose(series.affine_lps, affine_lps, atol=1e-3)


def test_zip_with_nested_folders_and_a_non_dicom_file(tmp_path, hu):
    paths, _ = write_phantom_series(tmp_path / "ct", hu)
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, p in enumerate(paths):
            zf.write(p, f"patient/{i % 2}/{p.name}")
        zf.writestr("patient/notes.txt", "not dicom")
    volume, series = read_input(archive)
    np.testing.assert_array_equal(volume.array, hu)
    assert any("notes.txt" in n for n in series.notes)


def test_missing_slice_is_refused(tmp_path, hu):
    paths, _ = write_phantom_series(tmp_path / "ct", hu)
    paths[3].unlink()
    with pytest.raises(InputError, match="missing slices"):
        read_input(tmp_path / "ct")


def test_duplicated_position_is_refused(tmp_path, hu):
    paths, _ = write_phantom_series(tmp_path / "ct", hu)
    ds = pydicom.dcmread(paths[2])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "ct" / "copy")
    with pytest.raises(InputError, match="same position"):
        read_input(tmp_path / "ct")


def test_folder_without_dicom_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM"):
        read_input(tmp_path / "x")


def test_zip_slip_entry_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../evil.dcm", b"x")
    with pytest.raises(InputError, match="unsafe path"):
        read_input(archive)


def test_zip_symlink_entry_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    link = zipfile.ZipInfo("CT/IM0001.dcm")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(InputError, match="symbolic link"):
        read_input(archive)
