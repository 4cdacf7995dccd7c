"""Fault tests of "No lost work" (docs/security.md) on a real stack: the web server (gunicorn) and Celery
worker subprocesses, PostgreSQL, and a Redis broker of the test's own (a ``redis-server``
started here, so that stopping it disturbs nobody) with append-only persistence.

The engine is the real one, on a small synthetic CT series (48 x 48 x 24 voxels, a few
seconds a job). To kill a worker or the broker at a known point, the worker is started
through ``tests.integration.held_worker``: while a "hold" file exists, a job waits at
the ``viewer`` stage, where the engine has written its outputs and the viewer arrays,
masks zip and checksums are not written yet. Nothing else of the worker is changed.

Prerequisites: PostgreSQL at 127.0.0.1:5432 (user postgres, trust) and ``redis-server``
on the PATH; the full-disk test mounts a tmpfs, so it needs root. Missing ones skip the
test, or fail it when CI=true.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import pydicom
import pytest

from tests import factories
from tests.stack import PostgresDatabase, Stack, free_port, reachable, require

pytestmark = pytest.mark.integration

# Limits of the test stack: short, so that Redis delivers the job of a dead worker again
# within a minute or so (the visibility timeout must exceed the hard time limit).
LIMITS = {
    "DELINEO_JOB_SOFT_TIME_LIMIT": "60",
    "DELINEO_JOB_TIME_LIMIT": "62",
    "CELERY_VISIBILITY_TIMEOUT": "64",
}
DOWNLOADS = ("labels.nii.gz", "structures.zip", "rtstruct.dcm", "seg.dcm")
# The 48 x 48 x 24 phantom is outside hn-oar's domain (engine.infer.domain): its RTSTRUCT and
# SEG are served only with the physician's acknowledgement.
ACKNOWLEDGED = "?acknowledge=outside-domain"


class RedisServer:
    """A ``redis-server`` of our own on a free port, persisting to an append-only file in
    ``directory`` (fsync every second), as docs/deployment.md asks of a production broker."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ],
            stdout=open(self.directory / "redis.log", "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not reachable("127.0.0.1", self.port):
            assert self.process.poll() is None, (self.directory / "redis.log").read_text()
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: the server dies at once, as in a crash; what it had written stays."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    require(shutil.which("redis-server") is not None, "redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hold_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hold") / "hold"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_server, hold_file):
    require(reachable("127.0.0.1", 5432), "PostgreSQL is not reachable at 127.0.0.1:5432")
    database = PostgresDatabase()
    running = Stack(
        tmp_path_factory.mktemp("stack"),
        database.url,
        redis_server.url,
        env={**LIMITS, "DELINEO_TEST_HOLD_FILE": str(hold_file)},
        worker_command=[sys.executable, "-m", "tests.integration.held_worker"],
    )
    running.database = database
    try:
        yield running.start()
    finally:
        running.stop()
        database.drop()


@pytest.fixture(scope="module")
def token(stack) -> str:
    return stack.token(*stack.create_account())


@pytest.fixture(scope="module")
def series_zip(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("series")
    paths = factories.dicom_series(work / "CT", slices=24, size=48)
    archive = work / "series.zip"
    archive.write_bytes(factories.zip_bytes({f"CT/{p.name}": p.read_bytes() for p in paths}))
    return archive


@pytest.fixture
def new_scan(stack, token, series_zip):
    """Upload the series again: a fresh scan for each job of a test."""
    return lambda: stack.upload_zip(token, series_zip)["id"]


@pytest.fixture
def held(hold_file):
    """Jobs wait at the viewer stage until the test lets them go (or the fixture ends)."""
    hold_file.touch()
    yield hold_file
    hold_file.unlink(missing_ok=True)


# --- helpers ---------------------------------------------------------------------------------


def job_row(stack: Stack, job_id: str) -> dict:
    """The job's row as the worker left it (attempts and checksums are not in the API)."""
    import psycopg

    with psycopg.connect(stack.database.url) as conn:
        attempts, checksums, result_dir = conn.execute(
            "SELECT attempts, checksums, result_dir FROM delineation_job WHERE id = %s", (job_id,)
        ).fetchone()
    return {"attempts": attempts, "checksums": checksums, "result_dir": result_dir}


def get_job(stack: Stack, token: str, job_id: str) -> dict:
    return json.loads(stack.api("GET", f"/api/jobs/{job_id}/", token).data)


def wait_for_stage(stack: Stack, token: str, job_id: str, stage: str = "viewer", timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        job = get_job(stack, token, job_id)
        if job["status"] == "running" and job["stage"] == stage:
            return job
        assert job["status"] in ("queued", "running"), job
        assert time.monotonic() < deadline, f"job never reached {stage}: {job}\n{stack.log_tail('worker')}"
        time.sleep(0.2)


def pool_processes(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def assert_outputs_whole(stack: Stack, token: str, job: dict, folder: Path, work: Path) -> None:
    """Every file in the job's folder is one it recorded, with the recorded SHA-256, and
    no temporary file is left; each download is served and opens."""
    row = job_row(stack, job["id"])
    on_disk = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    assert sorted(on_disk) == sorted(row["checksums"]), "files differ from those recorded"
    assert not [name for name in on_disk if Path(name).name.startswith(".")], "a temporary file was left"
    for name, path in on_disk.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["checksums"][name], name
    for name in DOWNLOADS:
        response = stack.api("GET", f"/api/jobs/{job['id']}/{name}{ACKNOWLEDGED}", token, preload_content=True)
        assert response.status == 200, (name, response.data[:300])
        (work / name).write_bytes(response.data)
    assert nib.load(work / "labels.nii.gz").shape == (48, 48, 24)
    assert pydicom.dcmread(work / "rtstruct.dcm").Modality == "RTSTRUCT"
    assert pydicom.dcmread(work / "seg.dcm").Modality == "SEG"
    with zipfile.ZipFile(work / "structures.zip") as archive:
        assert archive.testzip() is None and "structures.json" in archive.namelist()


def job_folder(stack: Stack, job: dict) -> Path:
    return Path(stack.env["MEDIA_ROOT"]) / "scans" / job["scan"] / "jobs" / job["id"]


# --- A worker killed in the middle of a job ---------------------------------------------------


def test_a_job_whose_pool_process_is_killed_starts_over_and_ends_whole(stack, token, new_scan, held, tmp_path):
    """SIGKILL of the process running the job (as the out-of-memory killer does): the
    worker's main process puts the job back in the queue, and it runs again from the start."""
    job_id = stack.create_job(token, new_scan())
    wait_for_stage(stack, token, job_id)
    (pool,) = pool_processes(stack.processes["worker"].pid)
    subprocess.run(["kill", "-KILL", str(pool)], check=True)
    held.unlink()
    job = stack.wait_for_job(job_id, token, timeout_s=180)
    assert job["status"] == "succeeded", f"{job['error']}\n{stack.log_tail('worker')}"
    assert job_row(stack, job_id)["attempts"] == 2
    assert_outputs_whole(stack, token, job, job_folder(stack, job), tmp_path)


def test_a_job_whose_worker_is_killed_is_finished_by_a_new_worker(stack, token, new_scan, held, tmp_path):
    """SIGKILL of the whole worker (main process and pool, as when its machine goes away):
    nobody acknowledged the job, so Redis delivers it again once the visibility timeout
    (64 s here) has passed, to the worker started afterwards, which runs it from the start."""
    job_id = stack.create_job(token, new_scan())
    wait_for_stage(stack, token, job_id)
    stack.kill("worker")
    held.unlink()
    assert get_job(stack, token, job_id)["status"] == "running"
    stack.start_worker("worker-b")
    job = stack.wait_for_job(job_id, token, timeout_s=240)
    assert job["status"] == "succeeded", f"{job['error']}\n{stack.log_tail('worker-b')}"
    assert job_row(stack, job_id)["attempts"] == 2
    assert job["timings"]["queue"] >= 60  # it waited for the visibility timeout
    assert_outputs_whole(stack, token, job, job_folder(stack, job), tmp_path)


# --- Redis stopped during a job ---------------------------------------------------------------


def test_redis_killed_during_a_job_and_restarted_loses_nothing(stack, token, new_scan, held, redis_server, tmp_path):
    """Redis dies (SIGKILL) while a job runs and another waits in its queue, and comes back
    on the same port with its append-only file: the running job finishes, the waiting one
    is delivered and runs; each runs once."""
    running = stack.create_job(token, new_scan())
    wait_for_stage(stack, token, running)
    waiting = stack.create_job(token, new_scan())
    assert get_job(stack, token, waiting)["status"] == "queued"
    assert redis_server.client().llen(stack.queue) == 1  # the waiting job's message, in Redis only
    redis_server.kill()
    time.sleep(2)
    redis_server.start()
    held.unlink()
    for job_id in (running, waiting):
        job = stack.wait_for_job(job_id, token, timeout_s=180)
        assert job["status"] == "succeeded", f"{job['error']}\n{stack.log_tail('worker-b', 80)}"
        assert job_row(stack, job_id)["attempts"] == 1
        assert_outputs_whole(stack, token, job, job_folder(stack, job), tmp_path)


# --- The same job delivered twice, sent twice -------------------------------------------------


def test_a_job_delivered_again_while_it_runs_is_not_run_twice(stack, token, new_scan, held, redis_server, tmp_path):
    """The broker hands a running job to a second worker (as after a lost connection, when
    the worker puts its unacknowledged messages back): the second delivery is dropped and
    the first run finishes, once. The second delivery is made by sending the job's task
    again to the queue, as the broker would."""
    from celery import Celery

    job_id = stack.create_job(token, new_scan())
    wait_for_stage(stack, token, job_id)
    stack.start_worker("worker-c")
    sender = Celery(broker=redis_server.url)
    sender.send_task("delineation.run_job", args=[job_id], queue=stack.queue)
    deadline = time.monotonic() + 60
    while f"job {job_id} is running in another worker process" not in stack.logs["worker-c"].read_text():
        assert time.monotonic() < deadline, stack.log_tail("worker-c")
        time.sleep(0.2)
    assert get_job(stack, token, job_id)["stage"] == "viewer"  # the first run, untouched
    held.unlink()
    job = stack.wait_for_job(job_id, token, timeout_s=180)
    assert job["status"] == "succeeded" and job_row(stack, job_id)["attempts"] == 1
    assert_outputs_whole(stack, token, job, job_folder(stack, job), tmp_path)


def test_two_submissions_of_the_same_job_give_one_job(stack, token, new_scan, held):
    """A retried POST, and ten identical POSTs at the same time on another scan: one job each."""
    scan = new_scan()
    first = post_job(stack, token, scan)
    again = post_job(stack, token, scan)
    assert (first[0], again[0]) == (201, 200) and again[1]["id"] == first[1]["id"]

    raced = new_scan()
    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda _: post_job(stack, token, raced), range(10)))
    assert sorted(code for code, _ in answers) == [200] * 9 + [201], answers
    assert len({job["id"] for _, job in answers}) == 1
    held.unlink()
    for scan_id in (scan, raced):
        jobs = json.loads(stack.api("GET", f"/api/jobs/?scan={scan_id}", token).data)
        assert len(jobs) == 1, jobs
        assert stack.wait_for_job(jobs[0]["id"], token, timeout_s=180)["status"] == "succeeded"


def post_job(stack: Stack, token: str, scan_id: str) -> tuple[int, dict]:
    response = stack.api(
        "POST",
        "/api/jobs/",
        token,
        body=json.dumps({"scan": scan_id, "model": "hn-oar"}),
        headers={"Content-Type": "application/json"},
    )
    return response.status, json.loads(response.data)


# --- A full disk during export ----------------------------------------------------------------


@pytest.fixture
def small_jobs_disk(stack, new_scan):
    """A scan whose jobs folder is a 128 KiB tmpfs: image.nii.gz (about 90 KB) fits, the
    masks and DICOM files after it do not."""
    scan_id = new_scan()
    folder = Path(stack.env["MEDIA_ROOT"]) / "scans" / scan_id / "jobs"
    folder.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=128k,mode=0755", "tmpfs", str(folder)], capture_output=True, text=True
    )
    require(mounted.returncode == 0, f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield scan_id, folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_during_export_fails_the_job_and_offers_nothing(stack, token, small_jobs_disk):
    scan_id, folder = small_jobs_disk
    job_id = stack.create_job(token, scan_id)
    job = stack.wait_for_job(job_id, token, timeout_s=180)
    assert job["status"] == "failed"
    assert job["error"] == (
        "The server ran out of disk space while writing the results of the delineation, so it was stopped and "
        "none of its files were kept. Ask the administrator to free disk space, then start the job again."
    )
    assert "export" in job["timings"], job["timings"]  # it failed while writing its outputs
    assert job["downloads"] == {} and job["viewer"] is None
    for name in DOWNLOADS:
        response = stack.api("GET", f"/api/jobs/{job_id}/{name}", token)
        assert response.status == 409 and b"The job failed" in response.data
    left = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    assert left == [f"{job_id}.lock"], left  # no output, whole or partial, nor a temporary file
    assert job_row(stack, job_id)["attempts"] == 1  # failed once, not retried
