"""NIfTI reading and writing keep voxels and affine, and refuse what is not a 3D image."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from engine.io.nifti import NiftiError, read_labels, read_volume, write_nifti
from engine.volume import LabelMap, Volume


def test_round_trip_keeps_voxels_and_affine(tmp_path):
    affine = np.array([[-0.9, 0, 0, 100], [0, -0.9, 0, 50], [0, 0, 2.5, -30], [0, 0, 0, 1]])
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    write_nifti(LabelMap(data, affine), tmp_path / "l.nii.gz")
    back = read_labels(tmp_path / "l.nii.gz")
    np.testing.assert_array_equal(back.array, data)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    write_nifti(Volume(data.astype(np.float32), affine), tmp_path / "v.nii")
    assert read_volume(tmp_path / "v.nii").spacing == pytest.approx((0.9, 0.9, 2.5))


@pytest.mark.parametrize(
    "data, affine, message",
    [
        (np.zeros((4, 4), np.float32), np.eye(4), "3D"),
        (np.zeros((2, 2, 2, 2, 2), np.float32), np.eye(4), "3D"),
        (np.full((3, 3, 3), np.nan, np.float32), np.eye(4), "NaN"),
    ],
)
def test_bad_images_are_refused_with_a_reason(tmp_path, data, affine, message):
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "bad.nii.gz")
    with pytest.raises(NiftiError, match=message):
        read_volume(tmp_path / "bad.nii.gz")


def test_garbage_is_refused(tmp_path):
    (tmp_path / "x.nii.gz").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(NiftiError, match="not a readable NIfTI"):
        read_volume(tmp_path / "x.nii.gz")


def test_singular_affine_is_refused(tmp_path):
    path = tmp_path / "singular.nii"
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), np.eye(4)), path)
    raw = bytearray(path.read_bytes())
    raw[296:312] = np.zeros(4, np.float32).tobytes()  # srow_y: nibabel refuses to write it itself
    path.write_bytes(bytes(raw))
    with pytest.raises(NiftiError, match="not invertible"):
        read_volume(path)
