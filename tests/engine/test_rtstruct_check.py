"""Every RTSTRUCT export is read back: a structure its contours lose fails the export."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from engine.infer import segment
from engine.io.dicom_series import read_series
from engine.io.rtstruct import build_rtstruct
from engine.io.rtstruct_check import (
    ROUNDTRIP_MIN_DICE,
    RTStructExportError,
    check_rtstruct,
)
from engine.models.registry import Structure
from engine.volume import LabelMap
from tests.engine.phantom import write_phantom_series

STRUCTURES = [
    Structure(1, "Ring", (255, 0, 0), "ORGAN"),
    Structure(2, "Islands", (0, 255, 0), "PTV"),
    Structure(3, "Absent", (0, 0, 255), "ORGAN"),  # empty in the label map
]


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ct")
    write_phantom_series(folder, np.zeros((24, 20, 6), np.float32), spacing=(1.25, 0.75, 2.5))
    series = read_series(folder)
    labels = np.zeros(series.volume.array.shape, np.uint8)
    labels[4:16, 3:15, 1:4] = 1
    labels[8:12, 7:11, 1:4] = 0
    labels[2:5, 2:5, 4] = 2
    labels[15:20, 10:18, 4] = 2
    return folder, series, LabelMap(labels, series.volume.affine)


def _drop_contours_of(name):
    """A writer that loses one structure's contours on its first slice, as a buggy one would."""

    def build(labels, series, structures, model_name, weights_sha256):
        ds = build_rtstruct(labels, series, structures, model_name, weights_sha256)
        number = next(r.ROINumber for r in ds.StructureSetROISequence if r.ROIName == name)
        roi = next(r for r in ds.ROIContourSequence if r.ReferencedROINumber == number)
        first = roi.ContourSequence[0].ContourImageSequence[0].ReferencedSOPInstanceUID
        kept = [c for c in roi.ContourSequence if c.ContourImageSequence[0].ReferencedSOPInstanceUID != first]
        roi.ContourSequence = kept
        return ds

    return build


def test_a_faithful_export_passes_and_is_reported(ct, tmp_path):
    _, series, labels = ct
    ds = build_rtstruct(labels, series, STRUCTURES, "m", "0" * 64)
    scores = check_rtstruct(ds, labels, series, STRUCTURES, tmp_path / "check.json")
    # Empty versus empty counts 1.0.
    assert scores == {"Ring": 1.0, "Islands": 1.0, "Absent": 1.0}
    report = json.loads((tmp_path / "check.json").read_text())
    assert report == {
        "min_dice": 1.0,
        "threshold": ROUNDTRIP_MIN_DICE,
        "structures": scores,
    }


def test_lost_contours_fail_naming_the_structure(ct, tmp_path):
    _, series, labels = ct
    ds = _drop_contours_of("Ring")(labels, series, STRUCTURES, "m", "0" * 64)
    with pytest.raises(RTStructExportError, match=r"Ring \(Dice 0\.800\)") as failure:
        check_rtstruct(ds, labels, series, STRUCTURES, tmp_path / "check.json")
    assert "Islands" not in str(failure.value)
    report = json.loads((tmp_path / "check.json").read_text())  # written before failing
    assert report["structures"]["Islands"] == 1.0
    assert report["min_dice"] == pytest.approx(0.8)  # one of three equal slices lost


def test_a_structure_missing_from_the_file_scores_zero(ct):
    _, series, labels = ct
    ds = build_rtstruct(labels, series, STRUCTURES[:2], "m", "0" * 64)
    with pytest.raises(RTStructExportError, match=r"Absent \(Dice 0\.000\)"):
        check_rtstruct(ds, labels, series, STRUCTURES)


def _fake_engine(monkeypatch, labels, writer=None):
    model = SimpleNamespace(name="fake", weights_sha256="ab" * 32, structures=STRUCTURES, config={})
    monkeypatch.setattr(segment, "load_model", lambda name: model)
    monkeypatch.setattr(segment, "segment_volume", lambda volume, m, progress=None: labels)
    if writer is not None:
        monkeypatch.setattr(segment, "build_rtstruct", writer)


def test_segment_file_records_the_round_trip(ct, tmp_path, monkeypatch):
    folder, _, labels = ct
    _fake_engine(monkeypatch, labels)
    result = segment.segment_file(folder, "fake", tmp_path)
    assert result.rtstruct_roundtrip == {"Ring": 1.0, "Islands": 1.0, "Absent": 1.0}
    assert json.loads((tmp_path / "rtstruct_check.json").read_text())["min_dice"] == 1.0
    assert (tmp_path / "rtstruct.dcm").exists()


def test_segment_file_fails_when_the_export_loses_a_structure(ct, tmp_path, monkeypatch):
    folder, _, labels = ct
    _fake_engine(monkeypatch, labels, _drop_contours_of("Islands"))
    with pytest.raises(RTStructExportError, match="Islands"):
        segment.segment_file(folder, "fake", tmp_path)
    report = json.loads((tmp_path / "rtstruct_check.json").read_text())
    assert report["structures"]["Islands"] < 0.98
    # A failing RTSTRUCT is never written.
    assert not (tmp_path / "rtstruct.dcm").exists()


def test_the_worker_turns_a_failed_export_into_a_job_error(monkeypatch, tmp_path):
    from webapp.delineation import engine_client

    def failing(*args, **kwargs):
        raise RTStructExportError("RTSTRUCT export failed its round-trip check: Parotid_L (Dice 0.5)")

    monkeypatch.setattr(segment, "segment_file", failing)
    with pytest.raises(engine_client.DelineationError, match="Parotid_L"):
        engine_client.run_segmentation(tmp_path / "in", "hn-oar", tmp_path / "out")
