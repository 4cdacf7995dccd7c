"""A .nii.gz upload's gzip stream is unpacked in pieces and counted before the image is
read: a "gzip bomb" (a small file that unpacks to a huge volume) is refused with a message,
without the web process ever holding the unpacked volume, and nothing of it is kept."""

from __future__ import annotations

import gzip
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests import factories
from tests.stack import data_dir
from webapp.delineation.models import Scan

pytestmark = pytest.mark.django_db


def _zeros_nifti_gz(shape: tuple[int, int, int]) -> bytes:
    """A valid int16 NIfTI of zeros, gzip-compressed: about 1000 times smaller than its volume."""
    image = nib.Nifti1Image(np.zeros(shape, dtype=np.int16), np.diag([1.0, 1.0, 1.0, 1.0]))
    return gzip.compress(image.to_bytes(), compresslevel=9)


def _upload(client, data: bytes, name: str = "ct.nii.gz"):
    return client.post("/api/scans/", {"file": SimpleUploadedFile(name, data)}, format="multipart")


def _nothing_kept(media_root) -> None:
    assert Scan.objects.count() == 0
    assert [p for p in media_root.rglob("*") if p.is_file()] == []


def test_gzip_bomb_is_refused_without_unpacking_it_into_memory(alice_api, media_root):
    bomb = _zeros_nifti_gz((320, 320, 320))  # 62.5 MiB of voxels in about 64 KiB
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        response = _upload(alice_api, bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 400, response.content
    detail = response.json()["detail"]
    assert "gzip bomb" in detail and "'ct.nii.gz'" in detail and "100 times" in detail
    assert peak < 16 << 20, f"the upload held {peak / 2**20:.0f} MiB at once; the volume is 62.5 MiB"
    _nothing_kept(media_root)


def test_unpacked_size_limit(alice_api, media_root, settings):
    settings.DELINEO_GZIP_MAX_UNPACKED_BYTES = 1 << 20
    data = factories.nifti_bytes(shape=(128, 128, 40))  # random voxels: 1.25 MiB, barely compressible
    response = _upload(alice_api, data)
    assert response.status_code == 413, response.content
    assert "unpacks to more than 1.0 MiB" in response.json()["detail"]
    _nothing_kept(media_root)


def test_ratio_limit_is_a_setting(alice_api, settings):
    settings.DELINEO_GZIP_MAX_RATIO = 2000
    response = _upload(alice_api, _zeros_nifti_gz((128, 128, 64)))
    assert response.status_code == 201, response.content


def test_real_ct_is_accepted(alice_api):
    """OpenKBP's CTs compress about 27 times, well under the limit."""
    with open(data_dir("openkbp", "pt_1", "ct.nii.gz"), "rb") as f:
        response = _upload(alice_api, f.read())
    assert response.status_code == 201, response.content
    assert response.json()["preflight"]["upload"]["nifti_shape"] == [128, 128, 128]


def test_truncated_stream_is_named(alice_api, media_root):
    data = factories.nifti_bytes(shape=(64, 64, 20))
    response = _upload(alice_api, data[: len(data) // 2])
    assert response.status_code == 400, response.content
    assert "truncated" in response.json()["detail"]
    _nothing_kept(media_root)
