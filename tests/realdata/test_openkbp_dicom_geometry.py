"""Real data: each openkbp DICOM series assembles to the voxels and affine of its NIfTI."""

from __future__ import annotations

import numpy as np
import pytest

from engine.io.nifti import read_volume
from engine.io.reader import read_input
from tests.stack import DATA, data_dir

CASES = ["pt_104", "pt_106", "pt_108", "pt_109", "pt_11", "pt_121"]


@pytest.mark.parametrize("case", CASES)
def test_series_matches_the_openkbp_nifti(case):
    volume, series = read_input(data_dir("openkbp_dicom", case))
    reference = read_volume(DATA / "openkbp" / case / "ct.nii.gz")
    np.testing.assert_array_equal(volume.array, reference.array)
    np.testing.assert_allclose(volume.affine, reference.affine, atol=0.01)
    assert series is not None and len(series.slices) == volume.array.shape[2]
