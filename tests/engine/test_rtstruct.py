"""RTSTRUCT export: contours rasterise back to the label map, references and strings valid."""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
from skimage.draw import polygon2mask

from engine.io.dicom_series import read_series
from engine.io.rtstruct import RTStructError, _ds, build_rtstruct, contour_data_bytes, write_rtstruct
from engine.models.registry import Structure
from engine.volume import LabelMap
from tests.dicom_tools import dciodvfy_errors
from tests.engine.phantom import write_phantom_series

SHA = "0123456789abcdef" * 4
STRUCTURES = [
    Structure(1, "Ring", (255, 0, 0), "ORGAN"),
    Structure(2, "Islands", (0, 255, 0), "PTV"),
]


@pytest.fixture
def series_and_labels(tmp_path):
    hu = np.zeros((24, 20, 6), np.float32)
    write_phantom_series(tmp_path / "ct", hu, spacing=(1.25, 0.75, 2.5), origin=(-11.3, 7.7, -40.0))
    series = read_series(tmp_path / "ct")
    labels = np.zeros(hu.shape, np.uint8)
    labels[4:16, 3:15, 1:4] = 1
    labels[8:12, 7:11, 1:4] = 0  # a hole
    labels[2:5, 2:5, 4] = 2
    labels[15:20, 10:18, 4] = 2  # a second island on the same slice
    labels[17, 12, 4] = 0
    return series, LabelMap(labels, series.volume.affine)


def _rasterise(ds, series, shape, roi_number):
    """Even-odd fill of every contour of one ROI at pixel centres, on the series grid."""
    inverse = np.linalg.inv(series.affine_lps)
    uid_to_k = {s.sop_instance_uid: k for k, s in enumerate(series.slices)}
    mask = np.zeros(shape, bool)
    roi = next(r for r in ds.ROIContourSequence if r.ReferencedROINumber == roi_number)
    for contour in roi.ContourSequence:
        points = np.array(contour.ContourData, float).reshape(-1, 3)
        voxels = (inverse @ np.column_stack([points, np.ones(len(points))]).T)[:3].T
        k = uid_to_k[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
        np.testing.assert_allclose(voxels[:, 2], k, atol=1e-2)  # on the referenced slice's plane
        mask[:, :, k] ^= polygon2mask(shape[:2], voxels[:, :2])
    return mask


def test_contours_rasterise_back_to_the_label_map(series_and_labels):
    series, labels = series_and_labels
    ds = build_rtstruct(labels, series, STRUCTURES, "test-model", "0" * 64)
    for number, s in enumerate(STRUCTURES, start=1):
        np.testing.assert_array_equal(_rasterise(ds, series, labels.array.shape, number), labels.array == s.label)


def test_references_names_and_decimal_strings(series_and_labels, tmp_path):
    series, labels = series_and_labels
    path = write_rtstruct(
        build_rtstruct(labels, series, STRUCTURES, "test-model", "ab" * 32),
        tmp_path / "rs.dcm",
    )
    ds = pydicom.dcmread(path)
    assert ds.Modality == "RTSTRUCT" and ds.ApprovalStatus == "UNAPPROVED"
    ref_for = ds.ReferencedFrameOfReferenceSequence[0]
    assert ref_for.FrameOfReferenceUID == series.frame_of_reference_uid
    ref_study = ref_for.RTReferencedStudySequence[0]
    assert ref_study.ReferencedSOPInstanceUID == series.study_instance_uid == ds.StudyInstanceUID
    ref_series = ref_study.RTReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == series.series_instance_uid
    assert {i.ReferencedSOPInstanceUID for i in ref_series.ContourImageSequence} == {
        s.sop_instance_uid for s in series.slices
    }
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["Ring", "Islands"]
    assert [o.RTROIInterpretedType for o in ds.RTROIObservationsSequence] == [
        "ORGAN",
        "PTV",
    ]
    assert [list(r.ROIDisplayColor) for r in ds.ROIContourSequence] == [
        [255, 0, 0],
        [0, 255, 0],
    ]
    raw = path.read_bytes()
    for roi in ds.ROIContourSequence:
        for contour in roi.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            assert contour.NumberOfContourPoints * 3 == len(contour.ContourData) >= 9
    assert b"ab" * 8 in raw  # weights hash recorded as provenance


def test_dciodvfy_reports_no_errors(series_and_labels, tmp_path):
    series, labels = series_and_labels
    path = write_rtstruct(
        build_rtstruct(labels, series, STRUCTURES, "test-model", "0" * 64),
        tmp_path / "rs.dcm",
    )
    errors = dciodvfy_errors(path)
    assert not errors, "\n".join(errors)


def test_label_map_off_the_series_grid_is_refused(series_and_labels):
    series, labels = series_and_labels
    shifted = labels.affine.copy()
    shifted[0, 3] += 5
    with pytest.raises(RTStructError, match="not on the grid"):
        build_rtstruct(LabelMap(labels.array, shifted), series, STRUCTURES, "m", "0" * 64)


@pytest.mark.parametrize("value", [0.0, -0.001, 123.456, -98765.4321, 1.23e13, -9.87654321e15, 4e300])
def test_decimal_strings_fit_16_characters(value):
    text = _ds(value)
    assert len(text) <= 16 and text != "-0.00"
    assert float(text) == pytest.approx(value, rel=1e-9, abs=0.005)


def test_non_finite_coordinate_is_refused():
    with pytest.raises(RTStructError, match="not a finite number"):
        _ds(float("nan"))
    with pytest.raises(RTStructError, match="not a finite number"):
        contour_data_bytes(np.array([1.0, float("inf"), 2.0]))


@pytest.mark.parametrize("value", [0.0, -0.001, -0.005, 0.004999, 2.675, -98765.4321, 1.23e13, 4e300])
def test_contour_data_bytes_are_each_values_decimal_string(value):
    # Fixed-point values are formatted all at once, beyond 1e12 mm one by one (_ds).
    data = contour_data_bytes(np.array([value, 1.0, -2.5]))
    assert len(data) % 2 == 0
    assert data.rstrip(b" ").decode("ascii").split("\\") == [
        _ds(value),
        _ds(1.0),
        _ds(-2.5),
    ]


def test_contour_data_is_written_as_built(series_and_labels, tmp_path):
    series, labels = series_and_labels
    ds = build_rtstruct(labels, series, STRUCTURES, "m", SHA)
    built = [np.asarray(c.ContourData, dtype=float) for roi in ds.ROIContourSequence for c in roi.ContourSequence]
    read = pydicom.dcmread(write_rtstruct(ds, tmp_path / "rs.dcm"))
    assert all(c["ContourData"].VR == "DS" for roi in read.ROIContourSequence for c in roi.ContourSequence)
    written = [np.asarray(c.ContourData, dtype=float) for roi in read.ROIContourSequence for c in roi.ContourSequence]
    assert len(written) == len(built)
    for a, b in zip(written, built, strict=True):
        np.testing.assert_array_equal(a, b)


def test_provenance_is_recorded_in_full(series_and_labels, tmp_path):
    """The weights' digest is a Software Versions value of its own, 64 characters, which is
    LO's limit: not the last value, where the padding space of an odd length would make it
    65 characters when read back."""
    series, labels = series_and_labels
    ds = build_rtstruct(labels, series, STRUCTURES, "test-model", SHA)
    assert ds.Manufacturer == "Delineo" and ds.ManufacturerModelName == "test-model"
    assert SHA in list(ds.SoftwareVersions) and all(len(v) <= 64 for v in ds.SoftwareVersions)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read = pydicom.dcmread(write_rtstruct(ds, tmp_path / "rs.dcm"))
        assert list(read.SoftwareVersions) == list(ds.SoftwareVersions)
    assert all(SHA in r.ROIDescription and "test-model" in r.ROIDescription for r in ds.StructureSetROISequence)
    assert len(ds.StructureSetLabel) <= 16 and ds.ApprovalStatus == "UNAPPROVED"
    assert len(ds.StructureSetDate) == 8 and len(ds.StructureSetTime) == 6
