"""segment_file's DICOM outputs: for NIfTI input a CT series, and an RTSTRUCT and a SEG
that reference it; for DICOM input a SEG that references the input series."""

from __future__ import annotations

import zipfile

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from engine.infer import segment
from engine.io.dicom_series import read_series
from engine.io.nifti import read_labels
from engine.volume import LabelMap
from tests.engine.phantom import write_phantom_series

# L-A-S voxel axes, as dcm2niix writes axial CTs: a left-handed grid (rows get reversed).
LAS = np.array([[-3.0, 0, 0, 60.0], [0, 2.5, 0, -50.0], [0, 0, 3.0, -30.0], [0, 0, 0, 1]])


def _ct(shape=(40, 36, 24)) -> np.ndarray:
    ct = np.full(shape, -1000, np.int16)
    ct[6:34, 5:31, 2:22] = 30
    ct[15:25, 12:22, 6:18] = 700
    return ct


def _fake_segment_volume(volume, model, progress=None):
    """Brainstem and Mandible in fixed boxes (labels 1 and 7); no network."""
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[10:20, 8:16, 5:12] = 1
    labels[22:30, 20:27, 14:19] = 7
    return LabelMap(labels, volume.affine)


@pytest.fixture
def nifti_input(tmp_path):
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(_ct(), LAS), path)
    return path


def _contour_image_uids(rs) -> set[str]:
    referenced = rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    return {i.ReferencedSOPInstanceUID for i in referenced.ContourImageSequence}


def test_nifti_input_gets_a_ct_series_referenced_by_rtstruct_and_seg(nifti_input, tmp_path, monkeypatch):
    monkeypatch.setattr(segment, "segment_volume", _fake_segment_volume)
    out = tmp_path / "out"
    result = segment.segment_file(nifti_input, "hn-oar", out)
    assert result.input_kind == "nifti"
    assert result.ct_dicom_zip == out / "ct_dicom.zip"
    assert result.rtstruct == out / "rtstruct.dcm" and result.seg == out / "seg.dcm"

    series = read_series(out / "ct_dicom.zip")
    with zipfile.ZipFile(out / "ct_dicom.zip") as zf:
        assert len(zf.namelist()) == 24
    # The series is the input image in patient space (rows reversed: LAS is left-handed).
    canonical = nib.as_closest_canonical(nib.Nifti1Image(_ct(), LAS))
    ours = nib.as_closest_canonical(nib.Nifti1Image(series.volume.array, series.volume.affine))
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(canonical.dataobj))
    np.testing.assert_allclose(ours.affine, canonical.affine, atol=1e-3)

    rs = pydicom.dcmread(out / "rtstruct.dcm")
    assert rs.StudyInstanceUID == series.study_instance_uid
    ref_for = rs.ReferencedFrameOfReferenceSequence[0]
    assert ref_for.FrameOfReferenceUID == series.frame_of_reference_uid
    ref_series = ref_for.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == series.series_instance_uid
    assert _contour_image_uids(rs) == {s.sop_instance_uid for s in series.slices}
    contoured = {roi.ReferencedROINumber for roi in rs.ROIContourSequence if "ContourSequence" in roi}
    assert contoured == {1, 7}  # Brainstem and Mandible: ROI numbers follow the model

    seg = hd.seg.segread(out / "seg.dcm")
    assert seg.StudyInstanceUID == series.study_instance_uid
    assert seg.FrameOfReferenceUID == series.frame_of_reference_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_instance_uid
    # Segment masks, placed by plane position on the written grid, match the label map
    # written as NIfTI on the input grid, once both are in patient space.
    labels_nifti = read_labels(out / "labels.nii.gz")
    volume = seg.get_volume(combine_segments=True, allow_missing_positions=True)
    inverse = np.linalg.inv(series.affine_lps)
    got = np.zeros(series.volume.array.shape, np.uint8)
    for index in np.argwhere(volume.array):
        lps = volume.affine @ [*index, 1.0]
        i, j, k = np.rint(inverse @ lps)[:3].astype(int)
        got[i, j, k] = volume.array[tuple(index)]
    labels_by_segment = {1: 1, 7: 7}  # segment n = structure n of the model
    got = np.vectorize(labels_by_segment.get)(got, 0).astype(np.uint8)
    got_canonical = nib.as_closest_canonical(nib.Nifti1Image(got, series.volume.affine))
    expected = nib.as_closest_canonical(nib.Nifti1Image(labels_nifti.array, labels_nifti.affine))
    np.testing.assert_array_equal(np.asarray(got_canonical.dataobj), np.asarray(expected.dataobj))


def test_dicom_input_gets_a_seg_of_the_input_series(tmp_path, monkeypatch):
    monkeypatch.setattr(segment, "segment_volume", _fake_segment_volume)
    write_phantom_series(tmp_path / "ct", _ct().astype(np.float32), spacing=(1.0, 1.0, 2.0))
    result = segment.segment_file(tmp_path / "ct", "hn-oar", tmp_path / "out")
    assert result.input_kind == "dicom" and result.ct_dicom_zip is None
    assert not (tmp_path / "out" / "ct_dicom").exists()
    series = read_series(tmp_path / "ct")
    seg = hd.seg.segread(result.seg)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_instance_uid
    assert seg.segment_numbers == list(range(1, 8))
    assert _contour_image_uids(pydicom.dcmread(result.rtstruct)) == {s.sop_instance_uid for s in series.slices}


def test_real_model_on_a_small_nifti_writes_every_output(nifti_input, tmp_path):
    out = tmp_path / "out"
    result = segment.segment_file(nifti_input, "hn-oar", out)
    for name in (
        "image.nii.gz",
        "labels.nii.gz",
        "structures.json",
        "rtstruct.dcm",
        "seg.dcm",
        "ct_dicom.zip",
    ):
        assert (out / name).is_file(), name
    series = read_series(result.ct_dicom_zip)
    assert _contour_image_uids(pydicom.dcmread(result.rtstruct)) == {s.sop_instance_uid for s in series.slices}
    seg = hd.seg.segread(result.seg)
    assert [seg.get_segment_description(n).SegmentLabel for n in seg.segment_numbers] == [
        s["name"] for s in result.structures
    ]


def test_series_without_study_uid_gets_no_seg(tmp_path, monkeypatch):
    # As in the TotalSegmentator example series: empty Study and Series Instance UIDs.
    monkeypatch.setattr(segment, "segment_volume", _fake_segment_volume)
    paths, _ = write_phantom_series(tmp_path / "ct", _ct().astype(np.float32))
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = ds.SeriesInstanceUID = ""
        ds.save_as(path)
    result = segment.segment_file(tmp_path / "ct", "hn-oar", tmp_path / "out")
    assert result.seg is None and not (tmp_path / "out" / "seg.dcm").exists()
    assert result.rtstruct is not None


def test_sheared_nifti_gets_no_dicom_outputs(tmp_path, monkeypatch):
    monkeypatch.setattr(segment, "segment_volume", _fake_segment_volume)
    sheared = LAS.copy()
    sheared[0, 1] = 0.5
    nib.save(nib.Nifti1Image(_ct(), sheared), tmp_path / "ct.nii.gz")
    result = segment.segment_file(tmp_path / "ct.nii.gz", "hn-oar", tmp_path / "out")
    assert (result.rtstruct, result.seg, result.ct_dicom_zip) == (None, None, None)
    assert (tmp_path / "out" / "labels.nii.gz").is_file()
    assert not (tmp_path / "out" / "ct_dicom").exists()
