"""Every DICOM series in ../shared/data assembles to dcm2niix's voxels and patient-space affine.

dcm2niix (Debian package) is the reference DICOM-to-NIfTI converter. Both results are
brought to the closest canonical (RAS) voxel order with nibabel, which only flips and
permutes axes, so voxels compare one to one and affines in mm.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from engine.io.dicom_series import read_series
from tests.dicom_tools import corners_mm, dcm2niix_canonical
from tests.stack import data_dir

SERIES = [
    *(f"openkbp_dicom/{case}" for case in ("pt_104", "pt_106", "pt_108", "pt_109", "pt_11", "pt_121")),
    *(f"ibsi_sts/STS_00{n}/{m}/image" for n in range(1, 7) for m in ("CT", "MR_T1", "PET")),
    "totalseg_example/example_ct_dicom",
]


@pytest.mark.parametrize("relative", SERIES)
def test_same_voxels_and_affine_as_dcm2niix(relative, tmp_path):
    folder = data_dir(relative)
    reference = dcm2niix_canonical(folder, tmp_path)
    series = read_series(folder)
    ours = nib.as_closest_canonical(nib.Nifti1Image(series.volume.array, series.volume.affine))
    assert ours.shape == reference.shape
    np.testing.assert_allclose(
        corners_mm(ours.affine, ours.shape),
        corners_mm(reference.affine, reference.shape),
        atol=0.01,
    )
    np.testing.assert_allclose(ours.affine, reference.affine, atol=0.01)
    np.testing.assert_allclose(ours.get_fdata(), reference.get_fdata(), rtol=1e-5, atol=1e-3)
