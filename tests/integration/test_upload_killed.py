"""A web server killed in the middle of a large upload leaves no temporary file: files
over FILE_UPLOAD_MAX_MEMORY_SIZE are spooled to files without a name, which the kernel
frees when the process ends (upload_limits.AnonymousTemporaryFileUploadHandler)."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.stack import Stack

pytestmark = pytest.mark.integration


def open_files_under(pgid: int, folder: Path) -> list[str]:
    """The files under ``folder`` that processes of the group ``pgid`` hold open."""
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(str(folder)):
                    found.append(target)
        except OSError:  # the process ended meanwhile
            continue
    return found


def test_a_server_killed_during_an_upload_leaves_no_temporary_file(tmp_path):
    spool = tmp_path / "upload-tmp"
    spool.mkdir()
    stack = Stack(
        tmp_path,
        database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}",
        env={"FILE_UPLOAD_TEMP_DIR": str(spool)},
    )
    try:
        stack.start()
        token = stack.token(*stack.create_account())
        boundary = "delineo-boundary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="Doe^John.zip"\r\n'
            "Content-Type: application/zip\r\n\r\n"
        ).encode()
        total = 64 << 20
        request = (
            f"POST /api/scans/ HTTP/1.1\r\nHost: 127.0.0.1:{stack.port}\r\nAuthorization: Token {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {total}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", stack.port)) as client:
            client.sendall(request + head)
            chunk = b"\0" * (1 << 20)
            for _ in range(24):  # 24 MiB of the 64 announced: past the 10 MiB kept in memory
                client.sendall(chunk)
            web = stack.processes["web"].pid
            deadline = time.monotonic() + 60
            while not open_files_under(web, spool):
                assert time.monotonic() < deadline, "the upload was never spooled to disk"
                time.sleep(0.2)
            stack.kill("web", signal.SIGKILL)
        assert sorted(p.name for p in spool.iterdir()) == []
    finally:
        stack.stop()
