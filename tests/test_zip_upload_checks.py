"""A zip upload is checked without unpacking it: unsafe names, links, archives inside,
too many entries, too large unpacked, too compressed (zip bombs) are refused with a
message, and nothing of the upload is kept anywhere."""

from __future__ import annotations

import io
import os
import stat
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests import factories
from webapp.delineation.models import Scan
from webapp.delineation.upload_checks import _declared_entries

pytestmark = pytest.mark.django_db


@pytest.fixture
def series(tmp_path) -> dict[str, bytes]:
    """The files of a small valid CT series, to be zipped with one bad entry."""
    return {f"CT/{p.name}": p.read_bytes() for p in factories.dicom_series(tmp_path / "src", slices=3)}


def make_zip(entries: dict[str | zipfile.ZipInfo, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def upload(client, data: bytes, name: str = "ct.zip"):
    return client.post("/api/scans/", {"file": SimpleUploadedFile(name, data)}, format="multipart")


def assert_refused(response, media_root, *words, status=400) -> str:
    assert response.status_code == status, response.content
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, detail
    assert Scan.objects.count() == 0
    assert [p for p in media_root.rglob("*") if p.is_file()] == [], "nothing of a refused upload is kept"
    return detail


def test_valid_zip_is_accepted(alice_api, series):
    """The control: the series these tests spoil is accepted as it is."""
    response = upload(alice_api, make_zip(series))
    assert response.status_code == 201, response.content
    assert response.json()["preflight"]["upload"] == {"zip_members": 3}


@pytest.mark.parametrize("name", ["../x.dcm", "CT/../../x.dcm", "..\\x.dcm"])
def test_zip_slip_is_refused(alice_api, series, media_root, tmp_path, name):
    detail = assert_refused(upload(alice_api, make_zip({**series, name: b"x"})), media_root, "points outside the zip")
    assert repr(name) in detail
    assert not (media_root.parent / "x.dcm").exists() and not (tmp_path / "x.dcm").exists()


@pytest.mark.parametrize("name", ["/tmp/x.dcm", "C:/x.dcm", "C:\\x.dcm"])
def test_absolute_path_is_refused(alice_api, series, media_root, name):
    assert_refused(upload(alice_api, make_zip({**series, name: b"x"})), media_root, "an absolute path", repr(name))


def test_symlink_entry_is_refused(alice_api, series, media_root):
    link = zipfile.ZipInfo("CT/IM9999.dcm")
    link.create_system = 3  # Unix
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    detail = assert_refused(upload(alice_api, make_zip({**series, link: b"/etc/passwd"})), media_root, "a link")
    assert "'CT/IM9999.dcm'" in detail


@pytest.mark.parametrize(
    "name,data",
    [
        ("CT/more.zip", make_zip({"a.dcm": b"x"})),
        ("CT/more.tar.gz", b"\x1f\x8b\x08\x00" + b"\0" * 20),
        ("CT/more.tar", b"\0" * 1024),
        ("CT/IM9999.dcm", make_zip({"a.dcm": b"x"})),  # a zip under a DICOM name: found by its first bytes
        ("CT/IM9998.dcm", b"\0" * 257 + b"ustar\x0000" + b"\0" * 250),  # a tar under a DICOM name
    ],
    ids=["zip", "tar.gz", "tar", "zip-named-dcm", "tar-named-dcm"],
)
def test_nested_archive_is_refused(alice_api, series, media_root, name, data):
    detail = assert_refused(upload(alice_api, make_zip({**series, name: data})), media_root, "another archive")
    assert repr(name) in detail


def test_too_many_entries(alice_api, series, media_root, settings):
    settings.DELINEO_ZIP_MAX_ENTRIES = 3
    data = make_zip({**series, "CT/notes.txt": b"x"})
    assert_refused(upload(alice_api, data), media_root, "holds 4 entries", "the limit on this server is 3", status=413)


def test_too_large_unpacked(alice_api, media_root, settings):
    settings.DELINEO_ZIP_MAX_UNPACKED_BYTES = 1 << 20
    data = make_zip({"CT/a.dcm": os.urandom(600 << 10), "CT/b.dcm": os.urandom(600 << 10)})
    response = upload(alice_api, data)
    assert_refused(response, media_root, "unpacks to 1.2 MiB", "limit on this server is 1.0 MiB", status=413)


def test_zip_bomb_is_refused_by_its_ratio(alice_api, series, media_root):
    """10 MiB of zeros deflate to about 10 KiB: a ratio near 1000, against a limit of 100."""
    data = make_zip({**series, "CT/IM9999.dcm": bytes(10 << 20)})
    assert len(data) < 100 << 10
    assert_refused(upload(alice_api, data), media_root, "times its size (the limit is 100)", "zip bomb")


def test_ratio_limit_is_a_setting(alice_api, series, settings):
    settings.DELINEO_ZIP_MAX_RATIO = 1
    stored = make_zip(series, compression=zipfile.ZIP_STORED)
    assert upload(alice_api, stored).status_code == 201, "a ratio of 1 (stored, not compressed) passes"
    text = make_zip({**series, "CT/notes.txt": b"note " * 10000})
    assert upload(alice_api, text).status_code == 400


def test_declared_entry_count_is_read_from_the_end_record(tmp_path):
    path = tmp_path / "a.zip"
    path.write_bytes(make_zip({f"f{k}.txt": b"x" for k in range(70000)}, compression=zipfile.ZIP_STORED))
    assert _declared_entries(path) == 70000  # more than 65535: from the ZIP64 record
    path.write_bytes(b"not a zip")
    assert _declared_entries(path) is None
