"""No lost work, in the queue: jobs are acknowledged late and put back when their worker
dies, started at most DELINEO_JOB_MAX_ATTEMPTS times, and stopped at their time limit with a
message; Redis does not hand a running job to a second worker (visibility timeout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from celery.contrib.testing.mocks import TaskMessage
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from webapp.celery import app as celery_app
from webapp.delineation import engine_client, runner, tasks, viewer
from webapp.delineation.models import Job, Scan

REPO = Path(__file__).resolve().parent.parent

# --- Configuration ----------------------------------------------------------------------


def test_the_job_task_is_acknowledged_late_and_put_back_when_its_worker_dies():
    assert tasks.run_job.acks_late is True
    assert tasks.run_job.reject_on_worker_lost is True
    assert tasks.run_job.Request is tasks.JobRequest
    conf = celery_app.conf
    assert conf.task_acks_late is True and conf.task_reject_on_worker_lost is True
    assert conf.task_acks_on_failure_or_timeout is True  # an exception or the hard limit: not run again
    assert conf.worker_prefetch_multiplier == 1


def test_the_job_task_has_its_time_limits():
    assert tasks.run_job.soft_time_limit == settings.DELINEO_JOB_SOFT_TIME_LIMIT == 3600
    assert tasks.run_job.time_limit == settings.DELINEO_JOB_TIME_LIMIT == 3900
    assert celery_app.conf.task_soft_time_limit == 3600 and celery_app.conf.task_time_limit == 3900
    assert settings.DELINEO_JOB_MAX_ATTEMPTS == 3


PROBE = """
import json
from django.conf import settings
print(json.dumps({
    "soft": settings.DELINEO_JOB_SOFT_TIME_LIMIT, "hard": settings.DELINEO_JOB_TIME_LIMIT,
    "attempts": settings.DELINEO_JOB_MAX_ATTEMPTS,
    "transport": getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {}),
}))
"""


def probe(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DELINEO_JOB_", "CELERY_", "DJANGO_"))}
    clean.update(env, DJANGO_SETTINGS_MODULE="webapp.settings")
    return subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=clean, capture_output=True, text=True, timeout=120
    )


def test_redis_visibility_timeout_is_longer_than_the_longest_job_and_limits_come_from_the_environment():
    result = probe(CELERY_BROKER_URL="redis://127.0.0.1:6379/0")
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values["transport"]["visibility_timeout"] == 6 * 3600 > values["hard"]
    result = probe(
        CELERY_BROKER_URL="redis://127.0.0.1:6379/0",
        DELINEO_JOB_SOFT_TIME_LIMIT="7200",
        DELINEO_JOB_MAX_ATTEMPTS="2",
        CELERY_VISIBILITY_TIMEOUT="10000",
    )
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert (values["soft"], values["hard"], values["attempts"]) == (7200, 7500, 2)  # hard: soft + 5 minutes
    assert values["transport"]["visibility_timeout"] == 10000


@pytest.mark.parametrize(
    "env,message",
    [
        (
            {"CELERY_BROKER_URL": "redis://127.0.0.1:6379/0", "CELERY_VISIBILITY_TIMEOUT": "3900"},
            "CELERY_VISIBILITY_TIMEOUT=3900 must be longer than DELINEO_JOB_TIME_LIMIT=3900",
        ),
        ({"DELINEO_JOB_TIME_LIMIT": "600", "DELINEO_JOB_SOFT_TIME_LIMIT": "600"}, "must be longer than"),
        ({"DELINEO_JOB_MAX_ATTEMPTS": "0"}, "DELINEO_JOB_MAX_ATTEMPTS=0 is below the minimum"),
    ],
)
def test_unsafe_limits_are_refused(env, message):
    result = probe(**env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and message in result.stderr, result.stderr


# --- Behaviour --------------------------------------------------------------------------


@pytest.fixture
def queued_job(alice):
    scan = Scan.objects.create(owner=alice, name="s", input_kind="nifti", input_path="scans/x/original/ct.nii.gz")
    return Job.objects.create(owner=alice, scan=scan, model_name="hn-oar")


def redelivered(job: Job, attempts: int) -> Job:
    """As the job is when the broker delivers it again: running, ``attempts`` starts, a partial output."""
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, attempts=attempts, stage="network")
    job.output_dir.mkdir(parents=True)
    (job.output_dir / "image.nii.gz").write_bytes(b"partial")
    return job


@pytest.mark.django_db
def test_a_job_started_as_often_as_allowed_is_failed_with_a_message_not_run_again(queued_job, fake_engine, settings):
    settings.DELINEO_JOB_MAX_ATTEMPTS = 3
    redelivered(queued_job, attempts=3)
    assert runner.execute_job(queued_job.id) == "failed"
    assert not fake_engine
    queued_job.refresh_from_db()
    assert queued_job.status == "failed" and queued_job.attempts == 3 and queued_job.finished
    assert "was started 3 times" in queued_job.error and "not started again" in queued_job.error
    assert not queued_job.output_dir.exists()
    assert runner.execute_job(queued_job.id) == "failed" and not fake_engine  # and stays failed


@pytest.mark.django_db
def test_a_job_below_the_limit_starts_over(queued_job, fake_engine, settings):
    settings.DELINEO_JOB_MAX_ATTEMPTS = 3
    redelivered(queued_job, attempts=2)
    assert runner.execute_job(queued_job.id) == "succeeded"
    queued_job.refresh_from_db()
    assert queued_job.attempts == 3 and len(fake_engine) == 1


@pytest.mark.django_db
def test_the_soft_time_limit_fails_the_job_with_a_message_and_offers_nothing(
    alice_api, queued_job, monkeypatch, settings
):
    settings.DELINEO_JOB_SOFT_TIME_LIMIT = 1800

    def slow(input_path, model_name, out_dir, progress=None, series=None):
        progress("network", 20)
        (Path(out_dir) / "image.nii.gz").write_bytes(b"written before the limit")
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(engine_client, "run_segmentation", slow)
    assert runner.execute_job(queued_job.id) == "failed"
    queued_job.refresh_from_db()
    assert queued_job.status == "failed"
    assert queued_job.error.startswith("The delineation took longer than 30 minutes and was stopped.")
    assert "network" in queued_job.timings and queued_job.checksums == {} and not queued_job.result_dir
    assert not queued_job.output_dir.exists()
    job = alice_api.get(f"/api/jobs/{queued_job.id}/").json()
    assert job["downloads"] == {} and job["error"] == queued_job.error
    for name in ("labels.nii.gz", "structures.zip", "rtstruct.dcm"):
        assert alice_api.get(f"/api/jobs/{queued_job.id}/{name}").status_code == 409


@pytest.mark.django_db
def test_the_soft_time_limit_during_the_viewer_stage_is_handled_too(queued_job, fake_engine, monkeypatch):
    def too_late(result_dir):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(viewer, "prepare_viewer", too_late)
    assert runner.execute_job(queued_job.id) == "failed"
    queued_job.refresh_from_db()
    assert "took longer than 60 minutes" in queued_job.error and not queued_job.output_dir.exists()


@pytest.mark.django_db
def test_the_soft_time_limit_outside_the_job_code_still_gives_the_message(queued_job):
    Job.objects.filter(pk=queued_job.pk).update(status=Job.Status.RUNNING, kind=Job.Kind.AUDIT)
    tasks.run_job.on_failure(SoftTimeLimitExceeded(), "task-id", (str(queued_job.id),), {}, None)
    queued_job.refresh_from_db()
    assert queued_job.status == "failed"
    assert queued_job.error.startswith("The contour audit took longer than 60 minutes")


@pytest.mark.django_db
def test_the_hard_time_limit_fails_the_job_from_the_worker_main_process(queued_job):
    redelivered(queued_job, attempts=1)
    message = TaskMessage("delineation.run_job", id="task-1", args=(str(queued_job.id),))
    request = tasks.JobRequest(message, app=celery_app, task=tasks.run_job)
    request.on_timeout(soft=True, timeout=3600)  # the task gets SoftTimeLimitExceeded; nothing here
    queued_job.refresh_from_db()
    assert queued_job.status == "running"
    request.on_timeout(soft=False, timeout=3900)  # the pool kills the process; the job must not stay running
    queued_job.refresh_from_db()
    assert queued_job.status == "failed" and queued_job.finished
    assert queued_job.error.startswith("The delineation took longer than 65 minutes and was stopped.")
    assert not queued_job.output_dir.exists()


@pytest.mark.django_db
def test_the_hard_time_limit_leaves_a_finished_job_alone(queued_job, fake_engine):
    runner.execute_job(queued_job.id)
    runner.fail_after_time_limit(queued_job.id, 3900)
    queued_job.refresh_from_db()
    assert queued_job.status == "succeeded" and queued_job.result_path.exists()
    runner.fail_after_time_limit("00000000-0000-0000-0000-000000000000", 3900)  # a deleted job: nothing to do


@pytest.mark.django_db
def test_an_engine_error_fails_once_and_is_not_retried(queued_job, monkeypatch):
    calls = []

    def poison(input_path, model_name, out_dir, progress=None, series=None):
        calls.append(1)
        raise ZeroDivisionError("a bug the input triggers")

    monkeypatch.setattr(engine_client, "run_segmentation", poison)
    result = tasks.run_job.delay(str(queued_job.id))  # eager, as a worker would run it
    assert result.failed() and len(calls) == 1
    queued_job.refresh_from_db()
    assert queued_job.status == "failed" and "ZeroDivisionError" in queued_job.error
    assert not getattr(tasks.run_job, "autoretry_for", ())  # never retried on its own
