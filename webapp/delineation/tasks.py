"""Celery tasks. They take ids (never model objects), are sent only after the creating
transaction commits, acknowledge late (a job whose worker dies is redelivered) and can
run twice without harm. A job runs in ``runner``; the exports written after a job in
``exports``; result sends in ``dicom.send``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker.request import Request
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from webapp.delineation import exports, runner
from webapp.delineation.models import Job

logger = logging.getLogger(__name__)


class JobRequest(Request):
    """A job message as the worker's main process sees it. At the hard time limit the pool
    kills the job's process, so nothing in the task runs: the job is failed from here."""

    def on_timeout(self, soft: bool, timeout: float) -> None:
        super().on_timeout(soft, timeout)
        if soft:
            return  # the task itself gets SoftTimeLimitExceeded (execute_job)
        job_id = self.args[0] if self.args else self.kwargs.get("job_id")
        if not job_id:
            return
        try:
            runner.fail_after_time_limit(job_id, timeout)
        except Exception:  # the worker must survive a database hiccup here
            logger.exception("could not mark job %s failed after its hard time limit", job_id)


class JobTask(Task):
    """Base task: acknowledged when it ends, put back in the queue when its worker process
    dies (so it starts over, see ``runner.execute_job``); a job whose task raises is marked
    failed, not left running."""

    Request = JobRequest
    acks_late = True
    reject_on_worker_lost = True

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        job_id = args[0] if args else kwargs.get("job_id")
        if not job_id:
            return
        if isinstance(exc, SoftTimeLimitExceeded):  # outside runner.execute_job's own handling
            kind = Job.objects.filter(pk=job_id).values_list("kind", flat=True).first() or Job.Kind.SEGMENT
            error = runner.time_limit_message(kind, settings.DELINEO_JOB_SOFT_TIME_LIMIT)
        else:
            error = f"The job stopped unexpectedly ({type(exc).__name__}). Please try again."
        if (
            Job.objects.filter(pk=job_id)
            .exclude(status__in=Job.FINISHED)
            .update(status=Job.Status.FAILED, error=error, finished=timezone.now())
        ):
            runner.results_to_send(Job.objects.get(pk=job_id))


@shared_task(
    bind=True,
    base=JobTask,
    name="delineation.run_job",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.DELINEO_JOB_SOFT_TIME_LIMIT,
    time_limit=settings.DELINEO_JOB_TIME_LIMIT,
)
def run_job(self: Task, job_id: str) -> str:
    return runner.execute_job(job_id)


def queue_job(  # noqa: ANN001 (a user and a Scan)
    owner, scan, model_name: str, series_key: str = "", kind: str = Job.Kind.SEGMENT, **propagation
) -> tuple[Job, bool]:
    """Create a job (a delineation, with ``kind="audit"`` a contour audit, with
    ``kind="propagate"`` a contour propagation onto ``scan`` given ``planning_scan`` and
    ``contours_rtstruct`` or ``contours_job``) and queue it once the transaction commits;
    returns ``(job, True)``.

    The same request (scan, model, series, kind, and for a propagation its planning scan
    and contours) while such a job is still queued or running returns ``(that job, False)``
    and queues nothing, so a double click or a retried POST gives one result. Between
    concurrent requests the database decides (the constraints ``one_unfinished_*`` of
    ``Job``). Once that job has finished, the same request queues a new one.
    """
    same = {"scan": scan, "model_name": model_name, "series_key": series_key, "kind": kind, **propagation}
    for _ in range(3):  # the unfinished job may finish between the refused insert and the look-up
        try:
            with transaction.atomic():
                job = Job.objects.create(owner=owner, **same)
                submit(job)
            return job, True
        except IntegrityError:
            existing = Job.objects.filter(status__in=Job.UNFINISHED, **same).first()
            if existing is not None:
                logger.info("job %s already queued or running; the same request returns it", existing.id)
                return existing, False
    raise RuntimeError(f"could not queue a job on scan {scan.pk}: the same job kept appearing and finishing")


def _send_on_commit(task: Task, object_id: int | str, what: str, failed: Callable[[str], None]) -> None:
    """Send ``task`` with ``object_id`` (of a ``what``: "job") once the current transaction
    commits. With the broker down, ``failed(reason)`` marks the row failed with the reason
    ("task queue unavailable: OperationalError"), so that it does not stay queued."""

    def send() -> None:
        try:
            task.delay(object_id)
        except Exception as exc:
            logger.exception("could not queue %s %s", what, object_id)
            failed(f"task queue unavailable: {type(exc).__name__}")

    transaction.on_commit(send)


def submit(job: Job) -> None:
    """Queue ``job`` once the current transaction commits."""
    job_id = str(job.id)

    def failed(reason: str) -> None:
        Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(
            status=Job.Status.FAILED, error=f"The job could not be queued ({reason}).", finished=timezone.now()
        )

    _send_on_commit(run_job, job_id, "job", failed)


@shared_task(bind=True, name="delineation.send_result", acks_late=True, max_retries=None)
def send_result(self: Task, send_id: int) -> None:
    """One attempt at sending a job's result to a DICOM destination (``dicom.send.attempt``);
    tried again after the back-off it returns. Idempotent: a send no longer queued is left alone."""
    from webapp.delineation.dicom import send

    delay = send.attempt(send_id)
    if delay is not None:
        raise self.retry(countdown=delay)


def submit_send(send_id: int) -> None:
    """Queue a result send once the current transaction commits."""

    def failed(reason: str) -> None:
        from webapp.delineation.dicom.models import ResultSend

        ResultSend.objects.filter(pk=send_id, state="queued").update(
            state="failed", message=f"The send could not be queued ({reason}).", finished=timezone.now()
        )

    _send_on_commit(send_result, send_id, "result send", failed)


@shared_task(bind=True, name="delineation.build_export", acks_late=True, reject_on_worker_lost=True)
def build_export(self: Task, export_id: int) -> str:
    """Write an export of a finished job (``exports.run``): the RTSTRUCT for the daily scan,
    or a revision's RTSTRUCT or SEG. Idempotent: an export no longer queued is left alone."""
    return exports.run(export_id)


def submit_export(export_id: int) -> None:
    """Queue an export once the current transaction commits."""

    def failed(reason: str) -> None:
        from webapp.delineation.models import Export

        Export.objects.filter(pk=export_id, state=Export.State.QUEUED).update(
            state=Export.State.FAILED, error=f"It could not be queued ({reason}).", finished=timezone.now()
        )

    _send_on_commit(build_export, export_id, "export", failed)
