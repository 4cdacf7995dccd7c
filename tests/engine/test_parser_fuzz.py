"""Fuzzing the parsers (hypothesis): random bytes, and valid DICOM, NIfTI and RTSTRUCT files
with bytes replaced, inserted or cut off. Each reader either returns a sound result or raises
the error its docstring documents (``InputError``, ``RTStructImportError``), never what a
parser raised inside it.

Reproducible: ``derandomize=True`` draws the same 60 examples per test on every run (no
database of past failures), a few seconds each. For a longer random search by hand:
``DELINEO_FUZZ_EXAMPLES=2000 pytest tests/engine/test_parser_fuzz.py`` (not derandomized).
"""

from __future__ import annotations

import gzip
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import InputError
from engine.io.preflight import inspect_input
from engine.io.reader import read_input
from engine.io.rtstruct_import import RTStructImportError, import_rtstruct, read_rtstruct
from tests.malformed_corpus import _ct_slices, _encode, _nifti, _rtstruct_base, _zip

_EXAMPLES = int(os.environ.get("DELINEO_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=_EXAMPLES or 60,
    derandomize=not _EXAMPLES,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLICE = _encode(_ct_slices()[1])
NIFTI = _nifti(np.random.default_rng(0).integers(-1000, 1000, (8, 8, 3)).astype(np.int16), gz=False)
NIFTI_GZ = gzip.compress(NIFTI, mtime=0)
CT_FILES, RTSTRUCT = _rtstruct_base()


@st.composite
def mutated(draw, data: bytes, header: int | None = None) -> bytes:
    """``data`` with up to 6 bytes replaced, up to 2 runs inserted or deleted, and maybe cut
    short; positions mostly in the first ``header`` bytes, where the parsers read lengths."""
    out = bytearray(data)
    limit = min(header or len(out), len(out))
    for _ in range(draw(st.integers(0, 6))):
        if out:
            at = draw(st.integers(0, (limit if draw(st.booleans()) else len(out)) - 1))
            out[min(at, len(out) - 1)] = draw(st.integers(0, 255))
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(out)))
        if draw(st.booleans()):
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del out[at : at + draw(st.integers(1, 16))]
    if draw(st.booleans()):
        out = out[: draw(st.integers(0, len(out)))]
    return bytes(out)


def _check_read(path: Path) -> None:
    """read_input returns a sound 3D float volume or raises InputError; the same for the report."""
    try:
        volume, _ = read_input(path)
    except InputError as exc:
        assert str(exc).strip()
    else:
        assert volume.array.ndim == 3 and np.all(np.isfinite(volume.array))
    try:
        report = inspect_input(path)
    except InputError as exc:
        assert str(exc).strip()
    else:
        assert all(s["status"] in ("ok", "refused") for s in report["series"])


@FUZZ
@given(st.binary(max_size=2048), st.sampled_from(["IM0001.dcm", "scan.zip", "ct.nii", "ct.nii.gz", "scan"]))
def test_random_bytes(data, name):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        _check_read(path)


@FUZZ
@given(mutated(SLICE, header=len(SLICE) - 128), st.booleans(), st.booleans())
def test_mutated_dicom_series(slice_bytes, every_slice, as_zip):
    """A 3-slice CT whose middle slice (or every slice) is the mutated file."""
    files = {}
    for k, ds in enumerate(_ct_slices()):
        files[f"CT/IM{k:04d}.dcm"] = slice_bytes if every_slice or k == 1 else _encode(ds)
    with tempfile.TemporaryDirectory() as tmp:
        if as_zip:
            path = Path(tmp) / "series.zip"
            path.write_bytes(_zip(files))
        else:
            path = Path(tmp) / "upload"
            for name, data in files.items():
                (path / name).parent.mkdir(parents=True, exist_ok=True)
                (path / name).write_bytes(data)
        _check_read(path)


@FUZZ
@given(mutated(NIFTI, header=352), st.booleans())
def test_mutated_nifti(data, gz):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("ct.nii.gz" if gz else "ct.nii")
        path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
        _check_read(path)


@FUZZ
@given(mutated(NIFTI_GZ))
def test_mutated_gzip_stream(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ct.nii.gz"
        path.write_bytes(data)
        _check_read(path)


@FUZZ
@given(mutated(_zip(CT_FILES)))
def test_mutated_zip(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "series.zip"
        path.write_bytes(data)
        _check_read(path)


def _series():
    from engine.io.dicom_series import assemble_series, group_series

    datasets = []
    for name, data in CT_FILES.items():
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.filename = name
        datasets.append(ds)
    (candidate,), _ = group_series(datasets)
    return assemble_series(candidate)


SERIES = _series()


@FUZZ
@given(mutated(RTSTRUCT))
def test_mutated_rtstruct(data):
    """read_rtstruct + import_rtstruct: masks on the series' grid, or RTStructImportError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "RS.dcm"
        path.write_bytes(data)
        try:
            rois = import_rtstruct(read_rtstruct(path), SERIES)
        except RTStructImportError as exc:
            assert str(exc).strip()
        else:
            assert all(r.mask.shape == SERIES.volume.array.shape for r in rois)
