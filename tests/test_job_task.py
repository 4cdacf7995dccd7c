"""The Celery task: idempotent, records progress and per-stage timings, never leaves a job hanging."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from webapp.delineation import runner, tasks
from webapp.delineation.models import Job, Scan

pytestmark = pytest.mark.django_db


@pytest.fixture
def queued_job(alice, fake_engine):
    scan = Scan.objects.create(owner=alice, name="s", input_kind="nifti", input_path="scans/x/original/ct.nii.gz")
    return Job.objects.create(owner=alice, scan=scan, model_name="hn-oar")


def test_task_takes_an_id_and_runs_the_job(queued_job, fake_engine):
    assert tasks.run_job.delay(str(queued_job.id)).get() == "succeeded"
    queued_job.refresh_from_db()
    assert queued_job.status == "succeeded" and queued_job.attempts == 1
    assert queued_job.timings["network"] == 0.3
    assert (queued_job.result_path / "viewer" / "meta.json").exists()


def test_a_finished_job_is_not_run_again(queued_job, fake_engine):
    runner.execute_job(queued_job.id)
    queued_job.refresh_from_db()
    first = (queued_job.checksums, queued_job.finished, queued_job.attempts)
    assert runner.execute_job(queued_job.id) == "succeeded"
    assert len(fake_engine) == 1
    queued_job.refresh_from_db()
    assert (queued_job.checksums, queued_job.finished, queued_job.attempts) == first
    result = queued_job.result_path
    assert sorted(p.relative_to(result).as_posix() for p in result.rglob("*") if p.is_file()) == sorted(first[0])


def test_running_a_job_again_gives_the_same_files(queued_job, fake_engine):
    """Its worker died after the outputs were written, before the job was marked done:
    the broker delivers it again and it starts over, ending with the same files."""
    runner.execute_job(queued_job.id)
    queued_job.refresh_from_db()
    first = queued_job.checksums
    Job.objects.filter(pk=queued_job.pk).update(status="running", checksums={})
    assert runner.execute_job(queued_job.id) == "succeeded"
    queued_job.refresh_from_db()
    assert len(fake_engine) == 2 and queued_job.attempts == 2
    assert queued_job.checksums == first


def test_a_redelivered_running_job_starts_over(queued_job, fake_engine):
    Job.objects.filter(pk=queued_job.pk).update(status="running", attempts=1)
    stale = queued_job.output_dir
    stale.mkdir(parents=True)
    (stale / "partial.tmp").write_text("left by a dead worker")
    assert runner.execute_job(queued_job.id) == "succeeded"
    queued_job.refresh_from_db()
    assert queued_job.attempts == 2
    assert not (stale / "partial.tmp").exists()


def test_a_deleted_job_is_ignored(fake_engine):
    assert runner.execute_job("00000000-0000-0000-0000-000000000000") == "missing"
    assert not fake_engine


def test_progress_is_written_to_the_job(queued_job):
    Job.objects.filter(pk=queued_job.pk).update(status="running")
    recorder = runner.ProgressRecorder(queued_job.id)
    recorder("preprocess", 10)
    queued_job.refresh_from_db()
    assert (queued_job.stage, queued_job.progress) == ("preprocess", 10)
    recorder("network", 42)
    recorder("network", 40)  # never goes backwards
    recorder.finish_stage()
    queued_job.refresh_from_db()
    assert (queued_job.stage, queued_job.progress) == ("network", 42)
    assert set(recorder.stage_seconds) == {"preprocess", "network"}


def test_broker_down_fails_the_job_with_a_message(queued_job, monkeypatch, django_capture_on_commit_callbacks):
    def no_broker(*args, **kwargs):
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    monkeypatch.setattr(tasks.run_job, "delay", no_broker)
    with django_capture_on_commit_callbacks(execute=True):
        tasks.submit(queued_job)
    queued_job.refresh_from_db()
    assert queued_job.status == "failed"
    assert "could not be queued" in queued_job.error


def test_worker_lost_marks_the_job_failed(queued_job):
    tasks.run_job.on_failure(RuntimeError("worker lost"), "task-id", (str(queued_job.id),), {}, None)
    queued_job.refresh_from_db()
    assert queued_job.status == "failed" and "stopped unexpectedly" in queued_job.error


def test_task_options():
    assert tasks.run_job.acks_late is True
    assert tasks.run_job.name == "delineation.run_job"


def _hold_lock_in_another_process(path):
    """A process that takes the job's lock and keeps it until it is killed."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            f"f = open({str(path)!r}, 'a'); fcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('locked', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_job_running_in_another_process_is_not_started_again(queued_job, fake_engine):
    """The broker delivered the job twice (its connection was lost and the message put back)
    while its first run goes on: the second delivery is dropped, the first run is untouched.
    Once that process is gone (SIGKILL), the job can start over."""
    Job.objects.filter(pk=queued_job.pk).update(status="running", attempts=1, stage="network")
    queued_job.output_dir.mkdir(parents=True)
    (queued_job.output_dir / "labels.nii.gz").write_bytes(b"being written by the first run")
    holder = _hold_lock_in_another_process(queued_job.output_dir.with_name(f"{queued_job.id}.lock"))
    try:
        assert runner.execute_job(queued_job.id) == "running"
        queued_job.refresh_from_db()
        assert (queued_job.status, queued_job.attempts, queued_job.stage) == ("running", 1, "network")
        assert (queued_job.output_dir / "labels.nii.gz").read_bytes() == b"being written by the first run"
        assert not fake_engine
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert runner.execute_job(queued_job.id) == "succeeded"
    queued_job.refresh_from_db()
    assert queued_job.attempts == 2 and len(fake_engine) == 1


def test_a_job_of_a_scan_deleted_meanwhile_leaves_no_folder(queued_job, fake_engine, monkeypatch):
    scan_dir = queued_job.scan.directory
    real_run = runner._run

    def scan_deleted_first(job_id):
        queued_job.scan.delete()
        return real_run(job_id)

    monkeypatch.setattr(runner, "_run", scan_deleted_first)
    assert runner.execute_job(queued_job.id) == "missing"
    assert not scan_dir.exists() and not fake_engine
