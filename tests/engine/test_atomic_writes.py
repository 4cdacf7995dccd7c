"""Outputs are written under a temporary name and renamed into place: a write that fails
half-way leaves the previous file (or none) and no temporary file."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest

from engine.io import atomic, nifti
from engine.io.atomic import write_atomically
from engine.io.nifti import read_labels, write_nifti
from engine.volume import LabelMap


class Boom(RuntimeError):
    pass


@pytest.fixture
def out(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def _labels(value: int) -> LabelMap:
    return LabelMap(np.full((4, 5, 6), value, dtype=np.uint8), np.diag([2.0, 2.0, 3.0, 1.0]))


def _half_written_then_fail(image, filename) -> None:
    """A serialiser that writes part of the file, then fails (disk full, killed, bug)."""
    with open(filename, "wb") as f:
        f.write(b"\x1f\x8b partial")
    raise Boom("disk full")


def test_a_failing_nifti_write_keeps_the_old_file_and_leaves_no_temporary(out, monkeypatch):
    target = out / "labels.nii.gz"
    write_nifti(_labels(1), target)
    old = target.read_bytes()
    monkeypatch.setattr(nifti.nib, "save", _half_written_then_fail)
    with pytest.raises(Boom):
        write_nifti(_labels(2), target)
    assert os.listdir(out) == ["labels.nii.gz"]
    assert target.read_bytes() == old
    np.testing.assert_array_equal(read_labels(target).array, 1)


def test_a_failing_first_write_leaves_nothing(out, monkeypatch):
    monkeypatch.setattr(nifti.nib, "save", _half_written_then_fail)
    with pytest.raises(Boom):
        write_nifti(_labels(1), out / "structures" / "Brainstem.nii.gz")
    assert os.listdir(out / "structures") == []


def test_a_failing_json_write_keeps_the_old_file(out):
    target = out / "structures.json"
    target.write_text('[{"label": 1}]')

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write('[{"label": 2')  # cut off
            raise Boom("killed")

    with pytest.raises(Boom):
        write_atomically(target, write)
    assert os.listdir(out) == ["structures.json"]
    assert json.loads(target.read_text()) == [{"label": 1}]


def test_the_new_file_replaces_the_old_whole_with_ordinary_permissions(out):
    target = out / "labels.nii.gz"
    write_nifti(_labels(1), target)
    write_nifti(_labels(2), target)
    assert os.listdir(out) == ["labels.nii.gz"]
    np.testing.assert_array_equal(nib.load(target).get_fdata(), 2)
    assert target.stat().st_mode & 0o777 == 0o640


def test_the_temporary_file_is_hidden_keeps_the_suffixes_and_is_synced(out, monkeypatch):
    seen, synced = [], []
    real_fsync = atomic._fsync
    monkeypatch.setattr(
        atomic,
        "_fsync",
        lambda path, directory=False: (
            synced.append((os.path.basename(path), directory)),
            real_fsync(path, directory),
        ),
    )

    def write(tmp: str) -> None:
        seen.append(os.path.basename(tmp))
        with open(tmp, "wb") as f:
            f.write(b"x")

    write_atomically(out / "structures" / "Brainstem.nii.gz", write)
    assert seen[0].startswith(".Brainstem.nii.gz.") and seen[0].endswith(".nii.gz")
    assert list((out / "structures").glob("*.nii.gz")) == [out / "structures" / "Brainstem.nii.gz"]
    assert synced == [(seen[0], False), ("structures", True)]
