"""The job reaper of the SQLite broker (webapp/delineation/reaper.py): a running job whose
worker died is run again, or failed with a message when it has no attempt left; a queued
job whose message is lost is sent again; a job a live process holds is left alone; the
broker's used messages are deleted."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.utils import timezone
from kombu import Connection
from sqlalchemy import create_engine, text

from webapp.celery import app as celery_app
from webapp.celery import start_job_reaper
from webapp.delineation import reaper, runner, tasks
from webapp.delineation.models import Job, Scan

pytestmark = pytest.mark.django_db

QUEUE = "delineo-reaper-test"


@pytest.fixture
def make_job(alice, fake_engine):
    def make(status: str = "queued", attempts: int = 0, age_s: float = 0) -> Job:
        scan = Scan.objects.create(owner=alice, name="s", input_kind="nifti", input_path="scans/x/original/ct.nii.gz")
        job = Job.objects.create(owner=alice, scan=scan, model_name="hn-oar")
        created = timezone.now() - timedelta(seconds=age_s)
        Job.objects.filter(pk=job.pk).update(status=status, attempts=attempts, stage="preprocess", created=created)
        job.refresh_from_db()
        return job

    return make


@pytest.fixture
def broker_url(tmp_path) -> str:
    return f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}"


def publish(url: str, job: Job) -> None:
    """Send the job's message to the SQLite broker as the web process does."""
    celery_app.conf.update(CELERY_TASK_ALWAYS_EAGER=False)
    try:
        with Connection(url) as connection:
            tasks.run_job.apply_async((str(job.id),), connection=connection, queue=QUEUE)
    finally:
        celery_app.conf.update(CELERY_TASK_ALWAYS_EAGER=True)


def messages(url: str) -> list[tuple[bool, str | None]]:
    engine = create_engine(url.removeprefix("sqla+"))
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT visible, payload FROM kombu_message ORDER BY id")).fetchall()
    return [(bool(visible), reaper._job_id_of(payload)) for visible, payload in rows]


def take_all(url: str) -> None:
    """Mark every message taken by a worker, as kombu's transport does when it delivers one."""
    engine = create_engine(url.removeprefix("sqla+"))
    with engine.begin() as connection:
        connection.execute(text("UPDATE kombu_message SET visible = 0"))


def test_a_running_job_whose_lock_is_free_runs_again(make_job, django_capture_on_commit_callbacks):
    job = make_job("running", attempts=1)
    with django_capture_on_commit_callbacks(execute=True):
        done = reaper.reap()
    assert done.requeued == [str(job.id)] and done.failed == []
    job.refresh_from_db()
    assert job.status == "succeeded" and job.attempts == 2  # sent again, and run (eagerly here)


def test_a_running_job_whose_lock_is_held_is_left_alone(make_job, django_capture_on_commit_callbacks):
    job = make_job("running", attempts=1)
    with runner._run_lock(job) as mine, django_capture_on_commit_callbacks(execute=True) as sent:
        assert mine
        done = reaper.reap()
    assert done.requeued == [] and sent == []
    job.refresh_from_db()
    assert job.status == "running" and job.stage == "preprocess"


def test_a_job_held_by_this_worker_is_left_alone(make_job, django_capture_on_commit_callbacks):
    job = make_job("running", attempts=1)
    with django_capture_on_commit_callbacks(execute=True) as sent:
        done = reaper.reap(held=[str(job.id)])
    assert done.requeued == [] and sent == []
    job.refresh_from_db()
    assert job.status == "running"


def test_a_running_job_without_attempts_left_is_failed_with_a_message(make_job, settings):
    job = make_job("running", attempts=settings.DELINEO_JOB_MAX_ATTEMPTS)
    job.output_dir.mkdir(parents=True)
    (job.output_dir / "partial.nii.gz").write_bytes(b"left by a dead worker")
    done = reaper.reap()
    assert done.failed == [str(job.id)] and done.requeued == []
    job.refresh_from_db()
    assert job.status == "failed" and job.finished is not None
    assert "was started 3 times and each time stopped before it finished" in job.error
    assert not job.output_dir.exists()


def test_a_queued_job_whose_message_is_lost_is_sent_again(
    make_job, broker_url, django_capture_on_commit_callbacks, settings
):
    waiting = make_job("queued", age_s=600)
    publish(broker_url, waiting)
    lost = make_job("queued", age_s=600)  # its message was taken by a worker that died
    publish(broker_url, lost)
    engine = create_engine(broker_url.removeprefix("sqla+"))
    with engine.begin() as connection:
        connection.execute(text("UPDATE kombu_message SET visible = 0 WHERE id = (SELECT MAX(id) FROM kombu_message)"))
    young = make_job("queued", age_s=0)  # just created: its message may be on its way
    with django_capture_on_commit_callbacks(execute=True):
        done = reaper.reap(messages=reaper.SqlaBroker(broker_url, QUEUE))
    assert done.requeued == [str(lost.id)]
    for job, status in ((waiting, "queued"), (lost, "succeeded"), (young, "queued")):
        job.refresh_from_db()
        assert job.status == status, job
    assert done.deleted_messages == 1
    assert messages(broker_url) == [(True, str(waiting.id))]  # the taken message is gone


def test_used_messages_are_deleted_except_those_this_worker_holds(make_job, broker_url):
    jobs = [make_job("succeeded") for _ in range(3)]
    for job in jobs:
        publish(broker_url, job)
    take_all(broker_url)
    held = make_job("running", attempts=1)
    publish(broker_url, held)
    take_all(broker_url)
    done = reaper.reap(held=[str(held.id)], messages=reaper.SqlaBroker(broker_url, QUEUE))
    assert done.deleted_messages == 3
    assert messages(broker_url) == [(False, str(held.id))]


def test_the_worker_starts_the_reaper_with_the_sqlite_broker(monkeypatch, settings):
    started = []
    monkeypatch.setattr(reaper, "start_in_worker", started.append)
    settings.DELINEO_REAPER, settings.DELINEO_REAPER_INTERVAL = True, 17
    start_job_reaper()
    settings.DELINEO_REAPER = False
    start_job_reaper()
    assert started == [17]


def test_the_reaper_is_on_by_default_with_the_sqlite_broker_only(tmp_path):
    probe = "import django; django.setup(); from django.conf import settings; print(settings.DELINEO_REAPER)"
    for url, expected in ((f"sqla+sqlite:///{tmp_path / 'b.sqlite3'}", "True"), ("redis://127.0.0.1:6379/0", "False")):
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "webapp.settings", "CELERY_BROKER_URL": url}
        result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
        assert result.stdout.strip() == expected, result.stderr
