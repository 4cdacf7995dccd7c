"""Every DICOM series in ../shared/data assembles to dcm2niix's voxels and patient-space affine.

dcm2niix (Debian package) is the reference DICOM-to-NIfTI converter. Both results are
brought to the closest canonical (RAS) voxel order with nibabel, which only flips and
permutes axes, so voxels compare one to one and affines in mm.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from engine.io.dicom_series import read_series
from tests.stack import data_dir, require

SERIES = [
    *(
        f"openkbp_dicom/{case}"
        for case in ("pt_104", "pt_106", "pt_108", "pt_109", "pt_11", "pt_121")
    ),
    *(
        f"ibsi_sts/STS_00{n}/{m}/image"
        for n in range(1, 7)
        for m in ("CT", "MR_T1", "PET")
    ),
    "totalseg_example/example_ct_dicom",
]


def _corners_mm(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    ijk = np.array(
        [
            [i, j, k, 1]
            for i in (0, shape[0] - 1)
            for j in (0, shape[1] - 1)
            for k in (0, shape[2] - 1)
        ]
    )
    return (affine @ ijk.T)[:3].T


@pytest.mark.parametrize("relative", SERIES)
def test_same_voxels_and_affine_as_dcm2niix(relative, tmp_path):
    require(
        shutil.which("dcm2niix") is not None,
        "dcm2niix is not installed (make test installs it)",
    )
    folder = data_dir(relative)
    subprocess.run(
        [
            "dcm2niix",
            "-z",
            "n",
            "-b",
            "n",
            "-f",
            "ref",
            "-o",
            str(tmp_path),
            str(folder),
        ],
        check=True,
        capture_output=True,
    )
    (written,) = sorted(Path(tmp_path).glob("*.nii"))
    reference = nib.as_closest_canonical(nib.load(written))
    series = read_series(folder)
    ours = nib.as_closest_canonical(
        nib.Nifti1Image(series.volume.array, series.volume.affine)
    )
    assert ours.shape == reference.shape
    np.testing.assert_allclose(
        _corners_mm(ours.affine, ours.shape),
        _corners_mm(reference.affine, reference.shape),
        atol=0.01,
    )
    np.testing.assert_allclose(ours.affine, reference.affine, atol=0.01)
    np.testing.assert_allclose(
        ours.get_fdata(), reference.get_fdata(), rtol=1e-5, atol=1e-3
    )
