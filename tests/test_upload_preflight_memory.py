"""The web process's pre-flight of a 300-slice 512 x 512 CT reads headers only: its
memory does not grow with the slices' pixels (150 MiB here), for a folder or a zip; a
slice cut short inside its pixels is still refused.

tracemalloc counts every Python and NumPy allocation of the web side of an upload's
check (``engine_client.preflight``, which runs ``engine.io.preflight.inspect_input``)."""

from __future__ import annotations

import tracemalloc
import zipfile

import pytest

from tests import factories
from webapp.delineation import engine_client

SLICES, SIZE = 300, 512
PIXEL_BYTES = SLICES * SIZE * SIZE * 2  # int16


@pytest.fixture(scope="module")
def series_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ct300") / "CT"
    factories.dicom_series(folder, slices=SLICES, size=SIZE)
    return folder


@pytest.fixture(scope="module")
def series_zip(series_folder):
    path = series_folder.parent / "ct300.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for file in sorted(series_folder.iterdir()):
            archive.write(file, f"CT/{file.name}")
    return path


def _traced_peak(path):
    tracemalloc.start()
    try:
        report = engine_client.preflight(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return report, peak


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_preflight_of_a_300_slice_ct_holds_no_pixels(kind, series_folder, series_zip):
    report, peak = _traced_peak(series_folder if kind == "folder" else series_zip)

    (series,) = report["series"]
    assert series["status"] == "ok" and series["size"] == [SIZE, SIZE, SLICES]
    # Holding the slices' pixels would be PIXEL_BYTES (150 MiB) and more; the parsed
    # headers of 300 slices (and one zip entry at a time) are about 20 MiB.
    assert peak < PIXEL_BYTES // 4, f"pre-flight peaked at {peak / 2**20:.0f} MiB traced"


def test_a_slice_cut_inside_its_pixels_is_still_refused(series_folder, tmp_path):
    folder = tmp_path / "CT"
    folder.mkdir()
    files = sorted(series_folder.iterdir())[:20]
    for file in files:
        (folder / file.name).write_bytes(file.read_bytes())
    cut = folder / files[10].name
    cut.write_bytes(cut.read_bytes()[: -SIZE * SIZE])  # half of its pixels

    with pytest.raises(engine_client.PreflightError, match="truncated or damaged"):
        engine_client.preflight(folder)
