"""Ingest rules on small generated series, each breaking one rule at a time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from engine.errors import InputError
from engine.io.dicom_series import LPS_TO_RAS, read_series
from engine.io.preflight import inspect_input
from engine.io.reader import read_input
from tests.engine.phantom import write_phantom_series

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def hu():
    rng = np.random.default_rng(7)
    return rng.integers(-1000, 1500, size=(10, 8, 6)).astype(np.float32)


def _edit(path: Path, **changes) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


# --- Order, values, syntaxes -----------------------------------------------------------


def test_reversed_instance_numbers_and_shuffled_names_do_not_change_the_order(tmp_path, hu):
    paths, affine = write_phantom_series(tmp_path / "ct", hu)
    for k, p in enumerate(paths):  # instance numbers now increase with position
        _edit(p, InstanceNumber=k + 1)
    first = read_series(tmp_path / "ct")
    for k, p in enumerate(paths):  # and now decrease
        _edit(p, InstanceNumber=len(paths) - k)
    second = read_series(tmp_path / "ct")
    np.testing.assert_array_equal(first.volume.array, hu)
    np.testing.assert_array_equal(second.volume.array, hu)
    np.testing.assert_allclose(second.affine_lps, affine, atol=1e-4)


def test_signed_pixels_give_the_same_hu(tmp_path, hu):
    write_phantom_series(tmp_path / "ct", hu, signed=True)
    np.testing.assert_array_equal(read_series(tmp_path / "ct").volume.array, hu)


def test_rescale_slope_and_intercept_are_applied_per_slice(tmp_path, hu):
    paths, _ = write_phantom_series(tmp_path / "ct", hu)
    ds = pydicom.dcmread(paths[2])
    stored = ds.pixel_array.astype(np.int32)  # hu + 1024
    ds.PixelData = ((stored // 2).astype(np.uint16)).tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1024
    ds.save_as(paths[2])
    expected = hu.copy()
    expected[:, :, 2] = ((hu[:, :, 2] + 1024).astype(np.int32) // 2 * 2 - 1024).astype(np.float32)
    np.testing.assert_array_equal(read_series(tmp_path / "ct").volume.array, expected)


def _compress(paths: list[Path], syntax) -> None:
    for p in paths:
        if syntax == JPEGLosslessSV1:
            _gdcm_jpeg_lossless(p)
        else:
            ds = pydicom.dcmread(p)
            ds.compress(syntax)
            ds.save_as(p)


def _gdcm_jpeg_lossless(path: Path) -> None:
    """Re-encode a file as JPEG Lossless SV1 with GDCM (pydicom cannot encode it)."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()


@pytest.mark.parametrize(
    "syntax",
    [RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1],
    ids=lambda s: s.name,
)
def test_compressed_transfer_syntaxes_decode_to_the_same_voxels(tmp_path, syntax):
    # JPEG 2000 needs tiles of at least 2^5 pixels for its default resolution levels.
    hu = np.random.default_rng(2).integers(-1000, 1500, size=(40, 36, 3)).astype(np.float32)
    paths, _ = write_phantom_series(tmp_path / "ct", hu)
    _compress(paths, syntax)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_series(tmp_path / "ct").volume.array, hu)
    report = inspect_input(tmp_path / "ct")
    assert report["series"][0]["status"] == "ok"
    assert report["series"][0]["transfer_syntaxes"] == [syntax.name]


def test_an_unsupported_transfer_syntax_is_refused_before_decoding(tmp_path, hu):
    paths, _ = write_phantom_series(tmp_path / "ct", hu)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: not an image codec we read
        ds.PixelData = pydicom.encaps.encapsulate([ds.PixelData])
        ds["PixelData"].VR = "OB"
        ds.save_as(p, enforce_file_format=True)
    report = inspect_input(tmp_path / "ct")
    assert report["series"][0]["status"] == "refused"
    assert "cannot be decoded" in report["series"][0]["reason"]
    assert report["selected"] is None
    with pytest.raises(InputError, match="cannot be decoded"):
        read_input(tmp_path / "ct")


# --- Multi-frame and non-axial ---------------------------------------------------------


def test_enhanced_multiframe_ct_matches_the_single_frame_series(tmp_path, hu):
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    paths, affine = write_phantom_series(tmp_path / "ct", hu)
    legacy = [pydicom.dcmread(p) for p in paths]
    for ds in legacy:
        ds.Manufacturer = "Phantom"
    enhanced = LegacyConvertedEnhancedCTImage(legacy, generate_uid(), 3, generate_uid(), 1)
    (tmp_path / "mf").mkdir()
    enhanced.save_as(tmp_path / "mf" / "enhanced.dcm")
    series = read_series(tmp_path / "mf")
    np.testing.assert_array_equal(series.volume.array, hu)
    np.testing.assert_allclose(series.affine_lps, affine, atol=1e-4)
    assert [s.frame_number for s in series.slices] == sorted(s.frame_number for s in series.slices)
    assert {s.sop_instance_uid for s in series.slices} == {str(enhanced.SOPInstanceUID)}
    assert inspect_input(tmp_path / "mf")["series"][0]["multiframe"] is True


@pytest.mark.parametrize(
    "orientation, plane",
    [((0, 1, 0, 0, 0, -1), "sagittal"), ((1, 0, 0, 0, 0, -1), "coronal")],
)
def test_non_axial_series_go_into_the_affine(tmp_path, hu, orientation, plane):
    _, affine = write_phantom_series(tmp_path / "ct", hu, orientation=orientation)
    series = read_series(tmp_path / "ct")
    np.testing.assert_array_equal(series.volume.array, hu)
    np.testing.assert_allclose(series.volume.affine, LPS_TO_RAS @ affine, atol=1e-4)
    assert inspect_input(tmp_path / "ct")["series"][0]["plane"] == plane


# --- Refusals --------------------------------------------------------------------------


def test_a_scout_inside_the_series_is_refused(tmp_path, hu):
    paths, _ = write_phantom_series(tmp_path / "ct", hu)
    ds = pydicom.dcmread(paths[0])
    ds.SOPInstanceUID = generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(tmp_path / "ct" / "scout")
    with pytest.raises(InputError, match="localizer"):
        read_input(tmp_path / "ct")


def test_a_separate_scout_series_is_set_aside_with_a_note(tmp_path, hu):
    write_phantom_series(tmp_path / "up" / "ct", hu)
    scout = hu[:, :, :1]
    write_phantom_series(
        tmp_path / "up" / "scout",
        np.repeat(scout, 2, axis=2),
        orientation=(1, 0, 0, 0, 0, -1),
    )
    for p in (tmp_path / "up" / "scout").iterdir():
        _edit(p, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    volume, series = read_input(tmp_path / "up")
    np.testing.assert_array_equal(volume.array, hu)
    assert any("localizer" in n for n in series.notes)


def test_gantry_tilt_is_refused_with_the_angle(tmp_path, hu):
    paths, _ = write_phantom_series(tmp_path / "ct", hu, spacing=(1.0, 1.0, 2.0))
    for p in paths:
        ds = pydicom.dcmread(p)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + (z - 50.0) * np.tan(np.radians(10)), z]
        ds.save_as(p)
    with pytest.raises(InputError, match=r"gantry tilt of 10\.0 degrees"):
        read_input(tmp_path / "ct")


def test_mixed_image_sizes_are_refused(tmp_path, hu):
    paths, _ = write_phantom_series(tmp_path / "ct", hu)
    ds = pydicom.dcmread(paths[3])
    ds.Rows, ds.Columns = 4, 5
    ds.PixelData = np.zeros((4, 5), np.uint16).tobytes()
    ds.save_as(paths[3])
    with pytest.raises(InputError, match="image size 4 x 5 differs"):
        read_input(tmp_path / "ct")


def test_mixed_orientations_are_refused(tmp_path, hu):
    paths, _ = write_phantom_series(tmp_path / "ct", hu)
    _edit(paths[1], ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    with pytest.raises(InputError, match="mixed orientations"):
        read_input(tmp_path / "ct")


def test_irregular_slice_spacing_is_refused(tmp_path, hu):
    paths, _ = write_phantom_series(tmp_path / "ct", hu)  # 3 mm slices
    ds = pydicom.dcmread(paths[2])
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y, z + 1.0]
    ds.save_as(paths[2])
    with pytest.raises(InputError, match="irregular slice spacing"):
        read_input(tmp_path / "ct")


def test_pixel_data_shorter_than_rows_by_columns_is_refused(tmp_path, hu):
    paths, _ = write_phantom_series(tmp_path / "ct", hu)
    ds = pydicom.dcmread(paths[1])
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(paths[1])
    with pytest.raises(InputError, match="pixel data"):
        read_input(tmp_path / "ct")


# --- Grouping and choice ---------------------------------------------------------------


def test_empty_series_uids_are_grouped_by_geometry(tmp_path, hu):
    write_phantom_series(tmp_path / "up" / "a", hu, series_uid="")
    write_phantom_series(
        tmp_path / "up" / "b",
        hu[:6, :6],
        series_uid="",
        spacing=(0.7, 0.7, 3.0),
        seed=1,
    )
    report = inspect_input(tmp_path / "up")
    keys = [s["key"] for s in report["series"]]
    assert len(keys) == 2 and all(k.startswith("no-series-uid#") for k in keys)
    assert report["selected"] is None
    with pytest.raises(InputError, match="2 image series in the upload; choose one"):
        read_input(tmp_path / "up")
    small = next(s["key"] for s in report["series"] if s["size"][0] == 6)
    volume, _ = read_input(tmp_path / "up", series=small)
    np.testing.assert_array_equal(volume.array, hu[:6, :6])


def test_a_uid_shared_by_two_complete_stacks_gives_two_series(tmp_path, hu):
    uid = generate_uid()
    write_phantom_series(tmp_path / "up" / "a", hu, series_uid=uid)
    write_phantom_series(
        tmp_path / "up" / "b",
        hu[:6, :6],
        series_uid=uid,
        spacing=(0.7, 0.7, 3.0),
        seed=1,
    )
    report = inspect_input(tmp_path / "up")
    assert sorted(len(s["key"]) > len(uid) for s in report["series"]) == [True, True]
    assert all(s["status"] == "ok" for s in report["series"])


def test_a_second_series_must_be_chosen_and_the_choice_is_used(tmp_path, hu):
    write_phantom_series(tmp_path / "up" / "ct", hu)
    write_phantom_series(tmp_path / "up" / "mr", hu[::-1], modality="MR", seed=3)
    report = inspect_input(tmp_path / "up")
    assert sorted(s["modality"] for s in report["series"]) == ["CT", "MR"]
    with pytest.raises(InputError, match="choose one"):
        read_input(tmp_path / "up")
    mr = next(s["series_instance_uid"] for s in report["series"] if s["modality"] == "MR")
    volume, series = read_input(tmp_path / "up", series=mr)
    np.testing.assert_array_equal(volume.array, hu[::-1])
    assert series.series_instance_uid == mr
    with pytest.raises(InputError, match="no single image series"):
        read_input(tmp_path / "up", series="1.2.3")


def test_dicomdir_non_dicom_files_and_rtstruct_are_reported(tmp_path, hu):
    from engine.io.rtstruct import build_rtstruct
    from engine.models.registry import Structure
    from engine.volume import LabelMap

    write_phantom_series(tmp_path / "up" / "ct", hu)
    series = read_series(tmp_path / "up" / "ct")
    labels = np.zeros(hu.shape, np.uint8)
    labels[2:6, 2:6, 1:4] = 1
    rt = build_rtstruct(
        LabelMap(labels, series.volume.affine),
        series,
        [Structure(1, "Box", (255, 0, 0), "ORGAN")],
        "test",
        "0" * 64,
    )
    rt.save_as(tmp_path / "up" / "RS", enforce_file_format=True)
    (tmp_path / "up" / "readme.txt").write_text("not dicom")
    (tmp_path / "up" / "DICOMDIR").write_bytes(b"\0" * 200)
    report = inspect_input(tmp_path / "up")
    assert report["selected"] == series.series_instance_uid
    assert any("readme.txt" in n and "not a DICOM file" in n for n in report["skipped"])
    assert any("DICOMDIR ignored" in n for n in report["skipped"])
    (other,) = report["other_objects"]
    assert other["modality"] == "RTSTRUCT" and other["rois"] == ["Box"]
    assert other["referenced_series"] == [series.series_instance_uid]


def test_info_cli_prints_the_report_without_patient_names(tmp_path, hu):
    write_phantom_series(tmp_path / "ct", hu)
    out = subprocess.run(
        [sys.executable, "-m", "engine", "info", str(tmp_path / "ct")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout
    report = json.loads(out)
    (series,) = report["series"]
    assert series["status"] == "ok" and series["size"] == [10, 8, 6]
    assert series["spacing_mm"] == [1.5, 2.0, 3.0]
    assert series["patient_position"] is None and series["tilt_deg"] == 0.0
    assert series["slice_gaps_mm"] == {"min": 3.0, "median": 3.0, "max": 3.0}
    assert "Phantom" not in out and "PH001" not in out


def test_info_cli_refusal_exits_with_a_message(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.txt").write_text("hello")
    run = subprocess.run(
        [sys.executable, "-m", "engine", "info", str(tmp_path / "x")],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 2 and "no DICOM CT, MR or PET image series" in run.stderr


def test_patient_ids_only_when_asked_for(tmp_path, hu):
    write_phantom_series(tmp_path / "ct", hu)  # Patient ID PH001
    assert "patient_ids" not in inspect_input(tmp_path / "ct")
    assert "PH001" not in json.dumps(inspect_input(tmp_path / "ct"))
    report = inspect_input(tmp_path / "ct", patient_ids=True)
    assert report["patient_ids"] == {report["series"][0]["key"]: "PH001"}
