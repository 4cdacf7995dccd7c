"""RTSTRUCT import: our writer's structure sets rasterise back exactly; edge cases reported."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.extra.numpy import arrays
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from engine.__main__ import main
from engine.io.dicom_series import read_series
from engine.io.rtstruct import _ds, build_rtstruct, slice_polygons, write_rtstruct
from engine.io.rtstruct_import import RTStructImportError, import_rtstruct
from engine.models.registry import Structure
from engine.results import safe_file_stem
from engine.volume import LabelMap
from tests.engine.phantom import write_phantom_series

STRUCTURES = [
    Structure(1, "Ring", (255, 0, 0), "ORGAN"),
    Structure(2, "Islands", (0, 255, 0), "PTV"),
    Structure(3, "One slice", (0, 0, 255), "GTV"),
    Structure(4, "Empty", (9, 9, 9), "ORGAN"),
]
SHA = "0123456789abcdef" * 4


def _labels(shape: tuple[int, int, int]) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[4:16, 3:15, 1:4] = 1
    labels[8:12, 7:11, 1:4] = 0  # a hole through three slices
    labels[9, 8, 2] = 1  # an island inside the hole
    labels[2:5, 2:5, 4] = 2
    labels[15:20, 10:18, 4] = 2  # a second island on the same slice
    labels[17, 12, 4] = 0  # with a one-voxel hole
    labels[18:22, 1:3, 0] = 3  # one slice only, touching the image edge
    return labels


@pytest.fixture(scope="module")
def axial_folder(tmp_path_factory):
    """A 24 x 20 x 6 axial CT series (anisotropic, off-centre), one file per slice."""
    folder = tmp_path_factory.mktemp("axial")
    write_phantom_series(
        folder,
        np.zeros((24, 20, 6), np.float32),
        spacing=(1.25, 0.75, 2.5),
        origin=(-11.3, 7.7, -40.0),
    )
    return folder


@pytest.fixture(scope="module")
def axial(axial_folder):
    """The axial series and a label map on its grid."""
    series = read_series(axial_folder)
    return series, LabelMap(_labels(series.volume.array.shape), series.volume.affine)


def _rois(ds, series):
    return {roi.name: roi for roi in import_rtstruct(ds, series)}


def _export(series, labels):
    return build_rtstruct(labels, series, STRUCTURES, "test-model", SHA)


def test_every_structure_round_trips_exactly(axial):
    series, labels = axial
    rois = _rois(_export(series, labels), series)
    assert list(rois) == [s.name for s in STRUCTURES]
    for s in STRUCTURES:
        roi = rois[s.name]
        assert roi.mask.shape == labels.array.shape and roi.mask.dtype == bool
        np.testing.assert_array_equal(roi.mask, labels.array == s.label, err_msg=s.name)
        assert roi.interpreted_type == s.interpreted_type and roi.color == s.color
    # Outer contour and hole on three slices, an island in the hole on one.
    assert rois["Ring"].notes == [] and rois["Ring"].contours == 2 * 3 + 1
    assert rois["Islands"].contours == 3  # two islands and one hole, one slice
    assert rois["One slice"].mask[:, :, 1:].sum() == 0
    assert rois["Empty"].contours == 0 and not rois["Empty"].mask.any()
    assert rois["Empty"].notes == ["no contours: empty mask"]


def test_read_from_file(axial, tmp_path):
    series, labels = axial
    path = write_rtstruct(_export(series, labels), tmp_path / "rs.dcm")
    mask = import_rtstruct(path, series)[0].mask
    np.testing.assert_array_equal(mask, labels.array == 1)


def test_dangling_references_fall_back_to_position(axial):
    series, labels = axial
    ds = _export(series, labels)
    for roi in ds.ROIContourSequence:
        for contour in roi.get("ContourSequence", []):
            contour.ContourImageSequence[0].ReferencedSOPInstanceUID = generate_uid()
    del ds.ROIContourSequence[1].ContourSequence[0].ContourImageSequence  # no reference
    rois = _rois(ds, series)
    for s in STRUCTURES:
        np.testing.assert_array_equal(rois[s.name].mask, labels.array == s.label)
    assert rois["Ring"].notes == [
        ("7 of 7 contours matched to slices by position (their Referenced SOP Instance UID is not in the series)")
    ]
    assert any("1 of 3 contours matched" in n and "no Referenced" in n for n in rois["Islands"].notes)


def _shift_along_normal(contour, series, mm):
    normal = series.affine_lps[:3, 2] / np.linalg.norm(series.affine_lps[:3, 2])
    points = np.asarray(contour.ContourData, float).reshape(-1, 3) + mm * normal
    contour.ContourData = [_ds(v) for v in points.ravel()]


def test_contours_off_the_slice_planes_are_reported(axial):
    series, labels = axial
    ds = _export(series, labels)
    ring = ds.ROIContourSequence[0].ContourSequence
    # Between slices 1 and 2, nearer 1; onto slice 4, against its reference; below the
    # first slice, outside the image.
    _shift_along_normal(ring[0], series, 0.4 * 2.5)
    _shift_along_normal(ring[1], series, 3.0 * 2.5)
    one = ds.ROIContourSequence[2].ContourSequence[0]
    one.ContourImageSequence[0].ReferencedSOPInstanceUID = generate_uid()
    _shift_along_normal(one, series, -2.0 * 2.5)
    rois = _rois(ds, series)
    ring_notes = " | ".join(rois["Ring"].notes)
    assert "1 contours lie between slice planes (up to 1.00 mm" in ring_notes
    assert "1 contours lie off the slice they reference (up to 7.5 mm away" in ring_notes
    assert rois["Ring"].contours == 7
    # The moved contour went where its points are.
    assert rois["Ring"].mask[:, :, 4].any()
    assert not rois["One slice"].mask.any() and rois["One slice"].contours == 0
    assert any("outside the series' slice range" in n for n in rois["One slice"].notes)


def test_contour_beyond_the_image_in_plane_is_clipped_and_reported(axial):
    series, labels = axial
    ds = _export(series, labels)
    contour = ds.ROIContourSequence[2].ContourSequence[0]
    points = np.asarray(contour.ContourData, float).reshape(-1, 3)
    points += 5.0 * series.affine_lps[:3, 0]  # 5 columns further: past the last column
    contour.ContourData = [_ds(v) for v in points.ravel()]
    roi = _rois(ds, series)["One slice"]
    assert any("beyond the image in-plane; clipped" in n for n in roi.notes)
    assert roi.mask[23, 1:3, 0].all() and roi.mask.sum() == 2


def _raw_contour_data(contour, data: bytes) -> None:
    """Contour Data as a file holds it, undecoded (as pydicom reads it)."""
    tag = 0x30060050
    contour[tag] = RawDataElement(Tag(tag), "DS", len(data), data, 0, False, True)


def test_contour_data_padded_with_nul_is_read(axial):
    series, labels = axial
    ds = _export(series, labels)
    for roi in ds.ROIContourSequence:
        for contour in roi.get("ContourSequence", []):
            text = "\\".join(_ds(float(v)) for v in contour.ContourData)
            data = text.encode() + b"\x00" * (2 - len(text) % 2)  # NUL, to even length
            _raw_contour_data(contour, data)
    rois = _rois(ds, series)
    for s in STRUCTURES:
        np.testing.assert_array_equal(rois[s.name].mask, labels.array == s.label)


def test_contour_data_that_is_not_numbers_is_refused(axial):
    series, labels = axial
    ds = _export(series, labels)
    _raw_contour_data(ds.ROIContourSequence[0].ContourSequence[0], b"1.0\\abc\\2.0 ")
    with pytest.raises(RTStructImportError, match="Contour Data is not a list of numbers"):
        import_rtstruct(ds, series)


def test_other_frame_of_reference_is_refused(axial):
    series, labels = axial
    ds = _export(series, labels)
    other = generate_uid()
    ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = other
    for roi in ds.StructureSetROISequence:
        roi.ReferencedFrameOfReferenceUID = other
    with pytest.raises(RTStructImportError, match="'Ring' is in another Frame of Ref"):
        import_rtstruct(ds, series)


def test_one_roi_in_another_frame_of_reference_is_refused(axial):
    series, labels = axial
    ds = _export(series, labels)
    ds.StructureSetROISequence[1].ReferencedFrameOfReferenceUID = generate_uid()
    with pytest.raises(RTStructImportError, match="'Islands' is in another Frame"):
        import_rtstruct(ds, series)


def test_not_an_rtstruct_is_refused(axial, tmp_path):
    series, _ = axial
    ct = series.header.copy()
    with pytest.raises(RTStructImportError, match="not an RT Structure Set"):
        import_rtstruct(ct, series)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(RTStructImportError, match="junk.dcm: not a readable DICOM file"):
        import_rtstruct(junk, series)


def test_malformed_contour_data_is_refused(axial):
    series, labels = axial
    ds = _export(series, labels)
    ds.ROIContourSequence[0].ContourSequence[0].ContourData = ["1.0", "2.0"]
    with pytest.raises(RTStructImportError, match="'Ring', contour 1: .*got 2 values"):
        import_rtstruct(ds, series)


def test_point_markers_are_noted_not_filled(axial):
    series, labels = axial
    ds = _export(series, labels)
    ds.ROIContourSequence[2].ContourSequence[0].ContourGeometricType = "POINT"
    roi = _rois(ds, series)["One slice"]
    assert not roi.mask.any() and any("not CLOSED_PLANAR" in n for n in roi.notes)


def test_sagittal_series_round_trips_with_points_on_the_slice_planes(tmp_path):
    hu = np.zeros((22, 18, 7), np.float32)  # I along anterior-posterior, J along S-I
    write_phantom_series(
        tmp_path,
        hu,
        spacing=(0.9, 1.1, 2.0),
        origin=(30.0, -40.0, 60.0),
        orientation=(0, 1, 0, 0, 0, -1),
    )
    series = read_series(tmp_path)
    assert abs(series.affine_lps[0, 2]) > 1.9  # slices stacked along x: sagittal
    labels = LabelMap(_labels((22, 18, 7)), series.volume.affine)
    ds = _export(series, labels)
    rois = _rois(ds, series)
    for s in STRUCTURES:
        np.testing.assert_array_equal(rois[s.name].mask, labels.array == s.label)
    uid_to_x = {s.sop_instance_uid: s.position_lps[0] for s in series.slices}
    for roi in ds.ROIContourSequence:
        for contour in roi.get("ContourSequence", []):
            x = np.asarray(contour.ContourData, float).reshape(-1, 3)[:, 0]
            plane = uid_to_x[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            np.testing.assert_allclose(x, plane, atol=0.006)  # DS rounding only


def test_multiframe_references_carry_frame_numbers(axial):
    series, labels = axial
    uid = generate_uid()
    frames = [dataclasses.replace(s, sop_instance_uid=uid, frame_number=k + 1) for k, s in enumerate(series.slices)]
    enhanced = dataclasses.replace(series, slices=frames)
    ds = _export(enhanced, labels)
    ref = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    assert len(ref.RTReferencedSeriesSequence[0].ContourImageSequence) == 1
    ring = ds.ROIContourSequence[0].ContourSequence
    frame_numbers = [c.ContourImageSequence[0].ReferencedFrameNumber for c in ring]
    assert frame_numbers == [2, 2, 3, 3, 3, 4, 4]
    np.testing.assert_array_equal(_rois(ds, enhanced)["Ring"].mask, labels.array == 1)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(mask=arrays(np.bool_, (9, 7, 2)))
def test_any_mask_round_trips_exactly(axial, mask):
    series, _ = axial
    grid = np.zeros(series.volume.array.shape, np.uint8)
    # Random shapes: diagonal contacts, holes, single voxels.
    grid[3:12, 5:12, 2:4] = mask
    labels = LabelMap(grid, series.volume.affine)
    ds = build_rtstruct(labels, series, STRUCTURES[:1], "m", SHA)
    np.testing.assert_array_equal(import_rtstruct(ds, series)[0].mask, grid == 1)
    for k in range(grid.shape[2]):
        for polygon in slice_polygons(grid[:, :, k]):
            assert len(np.unique(polygon, axis=0)) >= 3


def test_file_names_are_safe_and_unique():
    taken: set[str] = {"structures"}
    assert safe_file_stem("GTV 1/mass (CT)", 1, taken) == "GTV_1_mass_CT"
    assert safe_file_stem("gtv_1_MASS_ct", 2, taken) == "gtv_1_MASS_ct_2"
    assert safe_file_stem("../..", 3, taken) == "roi_3"
    assert safe_file_stem("Structures", 4, taken) == "Structures_4"


def test_cli_writes_one_mask_per_roi_and_an_index(axial, axial_folder, tmp_path, capsys):
    series, labels = axial
    rs = write_rtstruct(_export(series, labels), tmp_path / "rs.dcm")
    out = tmp_path / "out"
    assert main(["contours", str(rs), "--reference", str(axial_folder), "--out", str(out)]) == 0
    index = json.loads((out / "structures.json").read_text())
    assert [e["file"] for e in index] == [
        "Ring.nii.gz",
        "Islands.nii.gz",
        "One_slice.nii.gz",
        "Empty.nii.gz",
    ]
    assert index[1] | {"volume_cm3": None} == {
        "roi_number": 2,
        "name": "Islands",
        "file": "Islands.nii.gz",
        "interpreted_type": "PTV",
        "color": [0, 255, 0],
        "volume_cm3": None,
        "contours": 3,
        "notes": [],
    }
    voxel_cm3 = 1.25 * 0.75 * 2.5 / 1000
    assert index[0]["volume_cm3"] == pytest.approx((labels.array == 1).sum() * voxel_cm3, abs=1e-3)
    for s, entry in zip(STRUCTURES, index, strict=True):
        img = nib.load(out / entry["file"])
        assert img.get_data_dtype() == np.uint8
        np.testing.assert_allclose(img.affine, series.volume.affine, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(img.dataobj), (labels.array == s.label).astype(np.uint8))
    assert json.loads(capsys.readouterr().out)["structures"] == index


def test_cli_bad_input_exits_2(axial_folder, tmp_path, capsys):
    a_ct_slice = next(axial_folder.iterdir())
    args = [
        "contours",
        str(a_ct_slice),
        "--reference",
        str(axial_folder),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(args) == 2
    assert "error: not an RT Structure Set" in capsys.readouterr().err


def test_contours_of_an_undefined_roi_are_refused(axial):
    series, labels = axial
    ds = _export(series, labels)
    ds.ROIContourSequence[3].ReferencedROINumber = 99
    with pytest.raises(RTStructImportError, match="ROI Number 99, which the Structure"):
        import_rtstruct(ds, series)


def _skimage_fill(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from skimage.draw import polygon

    out = np.zeros(shape, dtype=bool)
    out[polygon(rows, cols, shape=shape)] = True
    return out


@pytest.mark.parametrize("kind", ["float", "whole", "halves"])
def test_polygon_fill_is_skimage_pixel_for_pixel(kind):
    """The scan-line fill gives skimage.draw.polygon's pixels (inside or on the boundary)
    for random polygons: arbitrary coordinates, whole pixel centres (edges and vertices
    through centres) and half-pixel ones (as marching squares makes them), partly off
    the grid."""
    from engine.io.rtstruct_import import _polygon_pixels

    rng = np.random.default_rng(3)
    for _ in range(1500):
        n = int(rng.integers(3, 25))
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        if kind == "float":
            rows, cols = rng.uniform(-5, 45, n), rng.uniform(-5, 45, n)
        else:
            scale = 1.0 if kind == "whole" else 2.0
            rows = rng.integers(-6, 86, n) / scale
            cols = rng.integers(-6, 86, n) / scale
        ours = np.zeros(shape, dtype=bool)
        box, inside = _polygon_pixels(rows, cols, shape)
        ours[box] = inside
        np.testing.assert_array_equal(ours, _skimage_fill(rows, cols, shape))
