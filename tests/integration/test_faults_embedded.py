"""The fault test of "No lost work" on the embedded default (`make run`): SQLite and the
SQLite broker, whose transport has no visibility timeout. The whole worker (main process
and pool) is SIGKILLed in the middle of a job and a new worker started: its job reaper
finds the job running with its lock free, queues it again, and it ends once, whole; the
broker keeps no used message."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
import time

import pytest

from tests import factories
from tests.integration.test_faults import ACKNOWLEDGED, DOWNLOADS, get_job, job_folder, wait_for_stage
from tests.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture
def embedded(tmp_path):
    hold = tmp_path / "hold"
    stack = Stack(
        tmp_path,
        database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}",
        env={"DELINEO_TEST_HOLD_FILE": str(hold), "DELINEO_REAPER_INTERVAL": "2", "DELINEO_REAPER_GRACE": "5"},
        worker_command=[sys.executable, "-m", "tests.integration.held_worker"],
    )
    stack.hold = hold
    try:
        yield stack.start()
    finally:
        stack.stop()


def row(stack: Stack, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(stack.env["DATABASE_URL"].removeprefix("sqlite:///")) as conn:
        return conn.execute(sql, args).fetchall()


def broker_rows(stack: Stack) -> list[tuple]:
    with sqlite3.connect(stack.env["CELERY_BROKER_URL"].removeprefix("sqla+sqlite:///")) as conn:
        return conn.execute("SELECT id, visible FROM kombu_message").fetchall()


def test_a_job_whose_whole_worker_is_killed_ends_once_and_whole(embedded, tmp_path):
    token = embedded.token(*embedded.create_account())
    paths = factories.dicom_series(tmp_path / "CT", slices=24, size=48)
    archive = tmp_path / "series.zip"
    archive.write_bytes(factories.zip_bytes({f"CT/{p.name}": p.read_bytes() for p in paths}))
    embedded.hold.touch()
    job_id = embedded.create_job(token, embedded.upload_zip(token, archive)["id"])
    wait_for_stage(embedded, token, job_id)
    embedded.kill("worker")  # SIGKILL to the whole group: main process and pool
    embedded.hold.unlink()
    time.sleep(3)
    assert get_job(embedded, token, job_id)["status"] == "running"  # nobody else would ever run it

    embedded.start_worker("worker-b")
    job = embedded.wait_for_job(job_id, token, timeout_s=240)
    assert job["status"] == "succeeded", f"{job['error']}\n{embedded.log_tail('worker-b')}"
    sql = "SELECT attempts, checksums FROM delineation_job WHERE id = ?"
    ((attempts, checksums),) = row(embedded, sql, job_id.replace("-", ""))
    assert attempts == 2
    log = embedded.logs["worker-b"].read_text()
    assert log.count(f"job reaper: job {job_id} had no live worker; queued again") == 1

    recorded = json.loads(checksums)
    folder = job_folder(embedded, job)
    on_disk = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    assert sorted(on_disk) == sorted(recorded)
    for name, path in on_disk.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == recorded[name], name
    for name in DOWNLOADS:
        assert embedded.api("GET", f"/api/jobs/{job_id}/{name}{ACKNOWLEDGED}", token).status == 200, name

    deadline = time.monotonic() + 30  # the next reaper pass deletes the used messages
    while broker_rows(embedded) and time.monotonic() < deadline:
        time.sleep(1)
    assert broker_rows(embedded) == []
