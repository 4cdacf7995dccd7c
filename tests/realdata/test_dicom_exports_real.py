"""Real data: DICOM SEG of real series, and a real CT exported as DICOM, checked by
dciodvfy, dcm2niix, highdicom and our reader; the shipped model's DICOM outputs."""

from __future__ import annotations

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from engine.infer.segment import segment_file
from engine.io.dicom_seg import build_segmentation, write_segmentation
from engine.io.dicom_series import read_series
from engine.io.dicom_write import write_ct_series
from engine.io.nifti import read_labels, read_volume
from engine.models.registry import Structure, model_config
from engine.volume import LabelMap
from tests.dicom_tools import dciodvfy_errors, dcm2niix_canonical
from tests.engine.test_dicom_seg import masks_by_plane_position
from tests.stack import data_dir

HN_OAR = [Structure(s["label"], s["name"], tuple(s["color"]), s["type"]) for s in model_config("hn-oar")["structures"]]


def test_seg_of_the_openkbp_organs_on_the_plastimatch_series(tmp_path):
    series = read_series(data_dir("openkbp_dicom", "pt_104"))
    organs = read_labels(data_dir("openkbp", "pt_104") / "oar_labelmap.nii.gz")
    labels = LabelMap(organs.array, series.volume.affine)  # same grid (geometry test)
    path = write_segmentation(
        build_segmentation(labels, series, HN_OAR, "reference", "0" * 64),
        tmp_path / "seg.dcm",
    )
    assert not dciodvfy_errors(path)
    masks = masks_by_plane_position(hd.seg.segread(path), series)
    for number, structure in enumerate(HN_OAR, start=1):
        np.testing.assert_array_equal(masks[number], labels.array == structure.label)
    assert sum(m.any() for m in masks.values()) >= 5


@pytest.mark.parametrize("modality", ["CT", "MR_T1"])
def test_seg_on_an_ibsi_series(modality, tmp_path):
    source = data_dir("ibsi_sts", "STS_001", modality, "image")
    series = read_series(source)
    values = series.volume.array
    labels = (values > np.percentile(values, 90)).astype(np.uint8)  # any real shape
    structures = [Structure(1, "Bright", (255, 0, 0), "ORGAN")]
    path = write_segmentation(
        build_segmentation(LabelMap(labels, series.volume.affine), series, structures, "t", "0" * 64),
        tmp_path / "seg.dcm",
    )
    # The source's Study ID is too long for its VR: the SEG keeps it (it names the same
    # study), and adds no error of its own.
    inherited = set(dciodvfy_errors(next(source.iterdir())))
    assert set(dciodvfy_errors(path)) <= inherited
    masks = masks_by_plane_position(hd.seg.segread(path), series)
    np.testing.assert_array_equal(masks[1], labels == 1)


def test_openkbp_ct_exported_as_dicom_matches_plastimatch_and_dcm2niix(tmp_path):
    nifti = data_dir("openkbp", "pt_104") / "ct.nii.gz"
    written = write_ct_series(read_volume(nifti), tmp_path / "ct")
    ours = read_series(tmp_path / "ct")
    plastimatch = read_series(data_dir("openkbp_dicom", "pt_104"))
    np.testing.assert_array_equal(ours.volume.array, plastimatch.volume.array)
    np.testing.assert_allclose(ours.volume.affine, plastimatch.volume.affine, atol=0.01)
    assert not dciodvfy_errors(written.paths[0])
    theirs = dcm2niix_canonical(tmp_path / "ct", tmp_path / "dcm2niix")
    reference = nib.as_closest_canonical(nib.load(nifti))
    np.testing.assert_array_equal(np.asarray(theirs.dataobj), np.asarray(reference.dataobj))
    np.testing.assert_allclose(theirs.affine, reference.affine, atol=0.01)


def test_shipped_model_on_a_nifti_ct_writes_dicom_a_planning_system_can_import(
    tmp_path,
):
    result = segment_file(data_dir("openkbp", "pt_104") / "ct.nii.gz", "hn-oar", tmp_path)
    series = read_series(result.ct_dicom_zip)
    rs = pydicom.dcmread(result.rtstruct)
    referenced = rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == series.series_instance_uid
    assert {i.ReferencedSOPInstanceUID for i in referenced.ContourImageSequence} == {
        s.sop_instance_uid for s in series.slices
    }
    assert not dciodvfy_errors(result.rtstruct)
    assert not dciodvfy_errors(result.seg)
    seg = hd.seg.segread(result.seg)
    assert seg.FrameOfReferenceUID == series.frame_of_reference_uid
    masks = masks_by_plane_position(seg, series)
    labels = read_labels(tmp_path / "labels.nii.gz")  # right-handed L-P-S: same grid
    np.testing.assert_allclose(labels.affine, series.volume.affine, atol=0.01)
    for number, structure in enumerate(HN_OAR, start=1):
        np.testing.assert_array_equal(masks[number], labels.array == structure.label)
