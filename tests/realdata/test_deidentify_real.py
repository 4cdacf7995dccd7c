"""Real data: a de-identified openkbp case (CT + plastimatch's RTSTRUCT) imports to the same masks.

The RTSTRUCT of ``openkbp_dicom/pt_104`` references its CT by SOP Instance UID; after
de-identification every UID is new, so the same masks (with no contour matched by
position) show that the references were remapped consistently.
"""

from __future__ import annotations

import glob
import json

import numpy as np
import pydicom

from engine.io.deidentify import deidentify_upload
from engine.io.reader import read_input
from engine.io.rtstruct_import import import_rtstruct
from engine.models.registry import WEIGHTS_DIR
from tests.stack import data_dir

CASE = "pt_104"


def test_deidentified_rtstruct_imports_to_the_same_masks(tmp_path):
    source = data_dir("openkbp_dicom", CASE)
    (rs_path,) = glob.glob(str(source / "rtss_*.dcm"))
    _, series = read_input(source)
    before = import_rtstruct(rs_path, series)
    original = pydicom.dcmread(rs_path, stop_before_pixels=True)

    # As the web application does: ROI names of the shipped models' structures are kept.
    card = json.loads((WEIGHTS_DIR / "hn-rt.json").read_text())
    names = [n for s in card["structures"] for n in (s["name"], s["source"])]
    result = deidentify_upload(source, tmp_path / "deid", keep_roi_names=names)
    assert len(result.files) == 129 and result.dropped == 0

    _, new_series = read_input(tmp_path / "deid")
    (new_rs_path,) = (tmp_path / "deid").glob("RTSTRUCT_*.dcm")
    new_rs = pydicom.dcmread(new_rs_path)
    after = import_rtstruct(new_rs, new_series)

    np.testing.assert_array_equal(new_series.volume.array, series.volume.array)
    np.testing.assert_array_equal(new_series.volume.affine, series.volume.affine)
    assert [r.name for r in after] == [r.name for r in before]
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(new.mask, old.mask, err_msg=old.name)
        # Every contour placed by its UID: no note about matching by position.
        assert new.notes == [] and new.contours == old.contours > 0

    assert new_series.series_instance_uid != series.series_instance_uid
    assert new_series.frame_of_reference_uid != series.frame_of_reference_uid
    assert {ref.sop_instance_uid for ref in new_series.slices}.isdisjoint(ref.sop_instance_uid for ref in series.slices)
    assert new_rs.PatientID != original.PatientID and new_rs.PatientName == ""
    assert new_rs.PatientIdentityRemoved == "YES"
    assert [c.CodeValue for c in new_rs.DeidentificationMethodCodeSequence] == [
        "113100",
        "113105",
    ]
