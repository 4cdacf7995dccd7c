"""The job reaper of the embedded broker (docs/security.md, "No lost work").

kombu's SQLAlchemy transport (the SQLite broker of ``make run``) has no visibility timeout:
a message taken by a worker is marked invisible and stays so, and an acknowledgement does
not delete it. A worker killed as a whole (SIGKILL, power cut) leaves its job ``running``
and its message invisible for ever. The worker therefore runs :func:`reap` at start-up and
every ``DELINEO_REAPER_INTERVAL`` seconds (``worker_ready`` below):

* a ``running`` job whose lock (``runner._run_lock``) is free was left by a dead process:
  it is queued again, to start over, or failed with a message when it was already started
  ``DELINEO_JOB_MAX_ATTEMPTS`` times;
* a ``queued`` job older than ``DELINEO_REAPER_GRACE`` seconds whose message is neither
  waiting in the broker nor held by this worker is sent again;
* the broker's invisible messages that this worker does not hold (acknowledged ones, and
  those of dead workers) are deleted, so the broker's file does not grow for ever.

A job sent twice runs once: ``runner.execute_job`` drops a delivery of a job that is
finished or running elsewhere. The embedded deployment has one worker; with several on
this broker, a job held by another may be sent again, and that is harmless for the same
reason. Redis and RabbitMQ redeliver by themselves and do not use the reaper.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, transaction
from django.utils import timezone

from webapp.delineation import outputs
from webapp.delineation.models import Job

logger = logging.getLogger(__name__)

TASK_NAME = "delineation.run_job"


def lost_message(kind: str) -> str:
    """Why a job of ``kind`` whose worker stopped and that cannot be started again failed."""
    from webapp.delineation.runner import attempts_message

    return attempts_message(kind, settings.DELINEO_JOB_MAX_ATTEMPTS)


@dataclass
class Reaped:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    deleted_messages: int = 0


def _job_id_of(payload: str) -> str | None:
    """The job id a broker message carries (a ``delineation.run_job`` task), or None."""
    try:
        message = json.loads(payload)
        if message.get("headers", {}).get("task") != TASK_NAME:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else None
    except (ValueError, KeyError, IndexError, TypeError):
        return None


class SqlaBroker:
    """The messages of one queue in kombu's SQLAlchemy transport (tables ``kombu_queue``
    and ``kombu_message``), read and cleaned with SQLAlchemy, as the transport does."""

    def __init__(self, url: str, queue: str, connect_args: dict | None = None) -> None:
        from sqlalchemy import create_engine

        self.engine = create_engine(url.removeprefix("sqla+"), connect_args=connect_args or {})
        self.queue = queue

    def _rows(self, connection) -> list[tuple[int, bool, str]]:
        from sqlalchemy import inspect, text

        if not inspect(connection).has_table("kombu_message"):
            return []
        return list(
            connection.execute(
                text(
                    "SELECT m.id, m.visible, m.payload FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id "
                    "WHERE q.name = :queue"
                ),
                {"queue": self.queue},
            )
        )

    def waiting_job_ids(self) -> set[str]:
        """Jobs whose message waits in the queue (visible)."""
        with self.engine.connect() as connection:
            return {job for _, visible, payload in self._rows(connection) if visible and (job := _job_id_of(payload))}

    def delete_taken(self, keep: set[str]) -> int:
        """Delete the invisible messages (taken by a worker), except those of jobs in ``keep``."""
        from sqlalchemy import bindparam, text

        delete = text("DELETE FROM kombu_message WHERE id IN :ids").bindparams(bindparam("ids", expanding=True))
        with self.engine.begin() as connection:
            rows = self._rows(connection)
            ids = [i for i, visible, payload in rows if not visible and _job_id_of(payload) not in keep]
            for start in range(0, len(ids), 500):
                connection.execute(delete, {"ids": ids[start : start + 500]})
        return len(ids)


def broker() -> SqlaBroker | None:
    """The broker to inspect when it is kombu's SQLAlchemy transport, else None."""
    url = settings.CELERY_BROKER_URL
    if not url.startswith("sqla+"):
        return None
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {}) or {}
    return SqlaBroker(url, settings.CELERY_TASK_DEFAULT_QUEUE, options.get("connect_args"))


def _requeue_or_fail(job_id) -> str | None:
    """Mark a running job of a dead process queued ("requeued": the caller sends it), or
    fail it when it was started ``DELINEO_JOB_MAX_ATTEMPTS`` times ("failed"); None when it
    is no longer running."""
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id, status=Job.Status.RUNNING).first()
        if job is None:
            return None
        if job.attempts >= settings.DELINEO_JOB_MAX_ATTEMPTS:
            job.status, job.error, job.finished = Job.Status.FAILED, lost_message(job.kind), timezone.now()
            job.save(update_fields=["status", "error", "finished"])
            return "failed"
        job.status, job.stage, job.progress = Job.Status.QUEUED, "", 0
        job.save(update_fields=["status", "stage", "progress"])
        return "requeued"


def reap(held: Iterable[str] = (), messages: SqlaBroker | None = None) -> Reaped:
    """One pass (see the module docstring). ``held``: ids of the jobs this worker has
    received and not finished; ``messages``: the broker, to find queued jobs without a
    message and delete taken ones (None: running jobs only)."""
    from webapp.delineation.runner import _run_lock
    from webapp.delineation.tasks import submit

    held = {str(j) for j in held}
    done = Reaped()
    for job in Job.objects.filter(status=Job.Status.RUNNING).exclude(pk__in=list(held)).select_related("scan"):
        try:
            with _run_lock(job) as free:
                # Decided while holding the job's lock, so no delivery starts it meanwhile.
                outcome = _requeue_or_fail(job.pk) if free else None
        except OSError:  # no lock file can be made (full disk): the next pass tries again
            continue
        if outcome == "failed":
            outputs.remove_tree(job.output_dir)  # a failed job keeps no partial output
            done.failed.append(str(job.pk))
        elif outcome == "requeued":
            submit(job)  # after the lock is released, or its delivery would find it held and drop itself
            done.requeued.append(str(job.pk))
    if messages is None:
        return done
    waiting = messages.waiting_job_ids()
    before = timezone.now() - timedelta(seconds=settings.DELINEO_REAPER_GRACE)
    lost = (
        Job.objects.filter(status=Job.Status.QUEUED, created__lt=before)
        .exclude(pk__in=[*held, *waiting, *done.requeued])
        .only("pk")
    )
    for job in lost:
        with transaction.atomic():
            submit(job)
        done.requeued.append(str(job.pk))
    done.deleted_messages = messages.delete_taken(keep=held)
    return done


def held_by_this_worker() -> set[str]:
    """Ids of the jobs this worker process has received and not finished (run in its main process)."""
    from celery.worker import state

    ids = set()
    for request in [*state.reserved_requests, *state.active_requests]:
        if request.name == TASK_NAME and request.args:
            ids.add(str(request.args[0]))
    return ids


def reap_and_log() -> None:
    try:
        done = reap(held_by_this_worker(), broker())
    except Exception:  # the worker must survive a database or broker hiccup here
        logger.exception("job reaper: the pass failed; the next one tries again")
        return
    finally:
        close_old_connections()
    for job_id in done.requeued:
        logger.warning("job reaper: job %s had no live worker; queued again", job_id)
    for job_id in done.failed:
        logger.warning("job reaper: job %s had no live worker and no attempt left; failed", job_id)
    if done.deleted_messages:
        logger.info("job reaper: %d finished or orphaned broker messages deleted", done.deleted_messages)


def start_in_worker(interval: float) -> threading.Thread:
    """Run :func:`reap_and_log` now and then every ``interval`` seconds, in a daemon thread."""
    stop = threading.Event()

    def loop() -> None:
        while True:
            reap_and_log()
            if stop.wait(interval):
                return

    thread = threading.Thread(target=loop, name="delineo-job-reaper", daemon=True)
    thread.stop = stop  # type: ignore[attr-defined]
    thread.start()
    return thread
