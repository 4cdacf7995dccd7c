"""DICOM SEG export: valid IOD, masks back by plane position, segments and references."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from engine.io.dicom_seg import (
    DicomSegError,
    build_segmentation,
    cielab,
    write_segmentation,
)
from engine.io.dicom_series import LPS_TO_RAS, DicomSeries, SliceRef, read_series
from engine.models.registry import Structure
from engine.volume import LabelMap, Volume
from tests.dicom_tools import dciodvfy_errors
from tests.engine.phantom import write_phantom_series

STRUCTURES = [
    Structure(3, "Parotid_L", (0, 255, 128), "ORGAN"),
    Structure(5, "PTV70", (255, 0, 0), "PTV"),
    Structure(7, "Mandible", (230, 230, 230), "ORGAN"),  # absent: an empty segment
    Structure(1, "Brainstem", (255, 170, 0), "ORGAN"),
]


def _labels(shape) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[4:16, 3:15, 1:4] = 3
    labels[8:12, 7:11, 2] = 0  # a hole
    labels[2:5, 2:5, 4] = 5
    labels[15:20, 10:18, 4] = 5  # a second island on the same slice
    labels[20:23, 0:3, 0] = 1
    labels[0, 19, 5] = 9  # a label that is no structure: not exported
    return labels


@pytest.fixture
def series_and_labels(tmp_path):
    hu = np.zeros((24, 20, 6), np.float32)
    c, s = np.cos(0.4), np.sin(0.4)
    write_phantom_series(
        tmp_path / "ct",
        hu,
        spacing=(1.25, 0.75, 2.5),
        origin=(-11.3, 7.7, -40.0),
        orientation=(c, 0.0, s, 0.0, 1.0, 0.0),  # oblique: positions are not just z
    )
    series = read_series(tmp_path / "ct")
    return series, LabelMap(_labels(hu.shape), series.volume.affine)


def masks_by_plane_position(seg: Dataset, series: DicomSeries) -> dict[int, np.ndarray]:
    """Per segment number, its mask (I, J, K) rebuilt from each frame's Image Position."""
    inverse = np.linalg.inv(series.affine_lps)
    shape = series.volume.array.shape
    masks = {int(d.SegmentNumber): np.zeros(shape, bool) for d in seg.SegmentSequence}
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        i, j, k = (inverse @ [*position, 1.0])[:3]
        assert abs(i) < 1e-3 and abs(j) < 1e-3 and abs(k - round(k)) < 1e-3
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        masks[number][:, :, round(k)] = frame.T.astype(bool)  # (row, col) -> (I, J)
    return masks


def test_masks_read_back_by_plane_position_equal_the_label_map(series_and_labels, tmp_path):
    series, labels = series_and_labels
    path = write_segmentation(
        build_segmentation(labels, series, STRUCTURES, "test-model", "ab" * 32),
        tmp_path / "seg.dcm",
    )
    seg = hd.seg.segread(path)
    masks = masks_by_plane_position(seg, series)
    assert sorted(masks) == [1, 2, 3, 4]
    for number, structure in enumerate(STRUCTURES, start=1):
        np.testing.assert_array_equal(masks[number], labels.array == structure.label)
    assert not masks[3].any()


def test_highdicom_volume_matches_the_label_map(series_and_labels, tmp_path):
    series, labels = series_and_labels
    path = write_segmentation(
        build_segmentation(labels, series, STRUCTURES, "test-model", "0" * 64),
        tmp_path / "seg.dcm",
    )
    seg = hd.seg.segread(path)
    # highdicom's own reconstruction, in its (slice, row, column) convention.
    volume = seg.get_volume(combine_segments=False, allow_missing_positions=True)
    for number, structure in enumerate(STRUCTURES, start=1):
        expected = labels.array == structure.label
        if not expected.any():
            continue
        # Voxels (slice, row, col) of highdicom's volume -> LPS -> our (I, J, K).
        indices = np.argwhere(volume.array[..., number - 1])
        lps = volume.affine @ np.column_stack([indices, np.ones(len(indices))]).T
        ijk = np.rint(np.linalg.inv(series.affine_lps) @ lps)[:3].astype(int)
        got = np.zeros(expected.shape, bool)
        got[ijk[0], ijk[1], ijk[2]] = True
        np.testing.assert_array_equal(got, expected)


def test_segment_descriptions_codes_and_references(series_and_labels, tmp_path):
    series, labels = series_and_labels
    path = write_segmentation(
        build_segmentation(labels, series, STRUCTURES, "test-model", "ab" * 32),
        tmp_path / "seg.dcm",
    )
    seg = hd.seg.segread(path)
    assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    assert seg.Manufacturer == "Delineo"
    assert "abababababababab" in " ".join(seg.SoftwareVersions)
    assert seg.StudyInstanceUID == series.study_instance_uid
    assert seg.FrameOfReferenceUID == series.frame_of_reference_uid
    assert seg.PatientID == series.header.PatientID
    descriptions = [seg.get_segment_description(n) for n in seg.segment_numbers]
    assert [d.SegmentLabel for d in descriptions] == [s.name for s in STRUCTURES]
    assert [d.SegmentDescription for d in descriptions] == [
        "label 3",
        "label 5",
        "label 7",
        "label 1",
    ]
    assert {d.SegmentAlgorithmType for d in descriptions} == {"AUTOMATIC"}
    algorithm = descriptions[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "test-model" and algorithm.AlgorithmVersion == "ab" * 8
    parotid, ptv = descriptions[0], descriptions[1]
    assert parotid.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    parotid_type = parotid.SegmentedPropertyTypeCodeSequence[0]
    assert parotid_type.CodeValue == "45289007"  # parotid gland
    assert parotid_type.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"  # left
    assert ptv.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "309825002"
    assert ptv.SegmentedPropertyTypeCodeSequence[0].CodeValue == "228793007"
    referenced = {
        item.ReferencedSOPInstanceUID
        for ref_series in seg.ReferencedSeriesSequence
        for item in ref_series.ReferencedInstanceSequence
    }
    assert referenced == {s.sop_instance_uid for s in series.slices}
    for item in seg.PerFrameFunctionalGroupsSequence:  # each frame names its source slice
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        slice_ref = next(s for s in series.slices if s.sop_instance_uid == source.ReferencedSOPInstanceUID)
        np.testing.assert_allclose(position, slice_ref.position_lps, atol=1e-3)


def test_dciodvfy_reports_no_errors(series_and_labels, tmp_path):
    series, labels = series_and_labels
    path = write_segmentation(
        build_segmentation(labels, series, STRUCTURES, "test-model", "0" * 64),
        tmp_path / "seg.dcm",
    )
    errors = dciodvfy_errors(path)
    assert not errors, "\n".join(errors)


def test_all_segments_empty_is_still_a_valid_seg(series_and_labels, tmp_path):
    series, labels = series_and_labels
    empty = LabelMap(np.zeros_like(labels.array), labels.affine)
    path = write_segmentation(
        build_segmentation(empty, series, STRUCTURES, "test-model", "0" * 64),
        tmp_path / "seg.dcm",
    )
    seg = hd.seg.segread(path)
    assert seg.segment_numbers == [1, 2, 3, 4]
    assert not seg.pixel_array.any()


def test_series_header_is_not_modified(series_and_labels):
    series, labels = series_and_labels
    before = series.header.to_json_dict()
    build_segmentation(labels, series, STRUCTURES, "test-model", "0" * 64)
    assert series.header.to_json_dict() == before


def test_label_map_off_the_series_grid_is_refused(series_and_labels):
    series, labels = series_and_labels
    shifted = labels.affine.copy()
    shifted[0, 3] += 5
    with pytest.raises(DicomSegError, match="not on the grid"):
        build_segmentation(LabelMap(labels.array, shifted), series, STRUCTURES, "m", "0" * 64)


def test_series_without_uids_is_refused(series_and_labels):
    series, labels = series_and_labels
    header = series.header.copy()
    header.StudyInstanceUID = ""
    no_study = DicomSeries(series.volume, series.slices, header)
    with pytest.raises(DicomSegError, match="Study or Series Instance UID"):
        build_segmentation(labels, no_study, STRUCTURES, "m", "0" * 64)


def test_cielab_of_primary_colours():
    # ICC D50 PCS-Lab of sRGB red and white; 16-bit DICOM encoding of PS3.3 C.10.7.1.1.
    red = cielab((255, 0, 0)).value
    assert red[0] == pytest.approx(54.1 * 0xFFFF / 100, rel=0.01)
    assert red[1] == pytest.approx((81 + 128) * 0xFFFF / 255, rel=0.01)
    white = cielab((255, 255, 255)).value
    assert white[0] == 0xFFFF and white[1] == white[2] == int(128 * 0xFFFF / 255)


def _enhanced_series(hu_shape, affine_lps, frame_of_k) -> DicomSeries:
    """A metadata-only Enhanced CT image whose frames are the slices in a shuffled order."""
    n_cols, n_rows, n_slices = hu_shape
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = (
        pydicom.uid.generate_uid(),
        pydicom.uid.generate_uid(),
    )
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "CT", "Phantom^Enhanced", "PH002"
    ds.Rows, ds.Columns, ds.NumberOfFrames = n_rows, n_cols, n_slices
    row, col = affine_lps[:3, 0], affine_lps[:3, 1]
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = [
        *(row / np.linalg.norm(row)),
        *(col / np.linalg.norm(col)),
    ]
    measures = Dataset()
    measures.PixelSpacing = [float(np.linalg.norm(col)), float(np.linalg.norm(row))]
    measures.SliceThickness = float(np.linalg.norm(affine_lps[:3, 2]))
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = [Dataset() for _ in range(n_slices)]
    slices = []
    for k, frame in enumerate(frame_of_k):
        position = Dataset()
        lps = (affine_lps @ [0, 0, k, 1])[:3]
        position.ImagePositionPatient = [round(float(v), 4) for v in lps]
        per_frame[frame - 1].PlanePositionSequence = [position]
        slices.append(SliceRef(ds.SOPClassUID, ds.SOPInstanceUID, tuple(float(v) for v in lps), frame))
    ds.PerFrameFunctionalGroupsSequence = per_frame
    volume = Volume(np.zeros(hu_shape, np.float32), LPS_TO_RAS @ affine_lps)
    return DicomSeries(volume, slices, ds)


def test_multi_frame_source_frames_follow_their_positions(tmp_path):
    shape = (24, 20, 6)
    affine_lps = np.diag([1.25, 0.75, 2.5, 1.0])
    affine_lps[:3, 3] = (-11.3, 7.7, -40.0)
    frame_of_k = [4, 1, 6, 2, 5, 3]  # frame order differs from slice order
    series = _enhanced_series(shape, affine_lps, frame_of_k)
    labels = LabelMap(_labels(shape), series.volume.affine)
    path = write_segmentation(
        build_segmentation(labels, series, STRUCTURES, "test-model", "0" * 64),
        tmp_path / "seg.dcm",
    )
    seg = hd.seg.segread(path)
    masks = masks_by_plane_position(seg, series)
    for number, structure in enumerate(STRUCTURES, start=1):
        np.testing.assert_array_equal(masks[number], labels.array == structure.label)
    for item in seg.PerFrameFunctionalGroupsSequence:
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        k = round((np.linalg.inv(affine_lps) @ [*position, 1.0])[2])
        assert int(source.ReferencedFrameNumber) == frame_of_k[k]
