"""The reference DICOM tools the tests check our files with: dciodvfy and dcm2niix."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np

from tests.stack import require


def dciodvfy_errors(path: str | Path) -> list[str]:
    """The "Error" lines dciodvfy (Debian dicom3tools) reports for one DICOM file."""
    require(shutil.which("dciodvfy") is not None, "dciodvfy (Debian dicom3tools) is not installed")
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False, timeout=300)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def dcm2niix_canonical(folder: str | Path, out_dir: str | Path) -> nib.Nifti1Image:
    """dcm2niix's NIfTI of the one series in ``folder``, reoriented to the closest canonical
    (RAS) voxel order (flips and axis swaps only, so voxels compare one to one)."""
    require(shutil.which("dcm2niix") is not None, "dcm2niix is not installed")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["dcm2niix", "-z", "n", "-b", "n", "-f", "dcm2niix", "-o", str(out_dir), str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (written,) = sorted(out_dir.glob("dcm2niix*.nii"))
    return nib.as_closest_canonical(nib.load(written))


def corners_mm(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Patient coordinates (8, 3) in mm of the centres of a grid's corner voxels."""
    ijk = np.array([[i, j, k, 1] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    return (affine @ ijk.T)[:3].T
