"""Celery tasks. They take ids (never model objects), are sent only after the creating
transaction commits, acknowledge late (a job whose worker dies is redelivered) and can
run twice without harm: a finished job is left alone, a half-run one starts over in a
fresh output folder. A job started ``DELINEO_JOB_MAX_ATTEMPTS`` times is failed instead
of run again, and one that runs past its time limit is stopped and failed, each with a
message for the physician (docs/security.md, "No lost work").
"""

from __future__ import annotations

import logging
import time
from uuid import UUID

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker.request import Request
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from webapp.delineation import services
from webapp.delineation.models import Job

logger = logging.getLogger(__name__)


class ProgressRecorder:
    """Engine progress callback: writes stage and percent to the job, times each stage."""

    min_interval_s = 0.5

    def __init__(self, job_id: UUID) -> None:
        self.job_id = job_id
        self.stage = ""
        self.percent = 0
        self._written: tuple[str, int] = ("", -1)
        self._last_write = 0.0
        self._stage_start = time.monotonic()
        self.stage_seconds: dict[str, float] = {}

    def __call__(self, stage: str, percent: int) -> None:
        now = time.monotonic()
        percent = max(0, min(100, int(percent)))
        if stage != self.stage:
            if self.stage:
                self.stage_seconds[self.stage] = round(
                    self.stage_seconds.get(self.stage, 0) + now - self._stage_start, 3
                )
            self.stage, self._stage_start = stage, now
        self.percent = max(self.percent, percent)
        changed_stage = stage != self._written[0]
        if (self.stage, self.percent) != self._written and (
            changed_stage or now - self._last_write >= self.min_interval_s
        ):
            self._write(now)

    def finish_stage(self) -> None:
        if self.stage:
            now = time.monotonic()
            self.stage_seconds[self.stage] = round(self.stage_seconds.get(self.stage, 0) + now - self._stage_start, 3)
            self._stage_start = now
            self.stage = ""

    def _write(self, now: float) -> None:
        Job.objects.filter(pk=self.job_id, status=Job.Status.RUNNING).update(
            stage=self.stage[:32], progress=self.percent
        )
        self._written = (self.stage, self.percent)
        self._last_write = now


def _what(is_audit: bool) -> str:
    return "contour audit" if is_audit else "delineation"


def time_limit_message(is_audit: bool, seconds: float) -> str:
    """Why a job that ran past its time limit failed, for the physician."""
    minutes = max(1, round(seconds / 60))
    return (
        f"The {_what(is_audit)} took longer than {minutes} minutes and was stopped. Try again later; "
        "if it happens again, ask the administrator to check the workers or to raise the time limit."
    )


def attempts_message(is_audit: bool, attempts: int) -> str:
    """Why a job whose worker died ``attempts`` times is not run again, for the physician."""
    return (
        f"The {_what(is_audit)} was started {attempts} times and each time stopped before it finished "
        "(the worker processing it stopped, for example out of memory), so it was not started again. "
        "If this happens only with this scan, it may be too large for this server; "
        "otherwise ask the administrator to check the workers."
    )


def fail_after_time_limit(job_id: str | UUID, seconds: float) -> None:
    """Fail a job whose process was killed at its hard time limit, and remove its partial outputs."""
    job = Job.objects.select_related("scan").filter(pk=job_id).first()
    if job is None or job.is_finished:
        return
    updated = (
        Job.objects.filter(pk=job_id)
        .exclude(status__in=Job.FINISHED)
        .update(status=Job.Status.FAILED, error=time_limit_message(job.is_audit, seconds), finished=timezone.now())
    )
    if updated:
        logger.warning("job %s killed at its hard time limit (%ss)", job_id, seconds)
        services.remove_tree(job.output_dir)


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
            fail_after_time_limit(job_id, timeout)
        except Exception:  # the worker must survive a database hiccup here
            logger.exception("could not mark job %s failed after its hard time limit", job_id)


class JobTask(Task):
    """Base task: acknowledged when it ends, put back in the queue when its worker process
    dies (so it starts over, see ``execute_job``); a job whose task raises is marked
    failed, not left running."""

    Request = JobRequest
    acks_late = True
    reject_on_worker_lost = True

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        job_id = args[0] if args else kwargs.get("job_id")
        if not job_id:
            return
        if isinstance(exc, SoftTimeLimitExceeded):  # outside execute_job's own handling
            is_audit = Job.objects.filter(pk=job_id, kind=Job.Kind.AUDIT).exists()
            error = time_limit_message(is_audit, settings.DELINEO_JOB_SOFT_TIME_LIMIT)
        else:
            error = f"The job stopped unexpectedly ({type(exc).__name__}). Please try again."
        Job.objects.filter(pk=job_id).exclude(status__in=Job.FINISHED).update(
            status=Job.Status.FAILED, error=error, finished=timezone.now()
        )


def _fail(job: Job, message: str, timings: dict) -> None:
    job.status = Job.Status.FAILED
    job.error = message
    job.timings = timings
    job.finished = timezone.now()
    job.save(update_fields=["status", "error", "timings", "finished"])


def execute_job(job_id: str | UUID) -> str:
    """Run one job to completion; returns its final status.

    Idempotent: a finished job is left alone; a job found running (its worker died and the
    broker delivered it again) starts over in an empty output folder, unless it was
    already started ``DELINEO_JOB_MAX_ATTEMPTS`` times: then it is failed with a message.
    On success the SHA-256 of every output is recorded (``Job.checksums``); downloads
    verify it.
    """
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).first()
        if job is None:
            logger.warning("job %s no longer exists", job_id)
            return "missing"
        if job.is_finished:
            logger.info("job %s already %s; nothing to do", job_id, job.status)
            return job.status
        if job.attempts >= settings.DELINEO_JOB_MAX_ATTEMPTS:
            logger.warning("job %s was started %d times without finishing; failed, not run again", job_id, job.attempts)
            _fail(job, attempts_message(job.is_audit, job.attempts), job.timings)
            services.remove_tree(job.output_dir)  # what the dead workers left
            return Job.Status.FAILED
        now = timezone.now()
        timings = {"queue": round((now - job.created).total_seconds(), 3)}
        job.status, job.stage, job.progress, job.error = Job.Status.RUNNING, "ingest", 0, ""
        job.started, job.attempts, job.timings = now, job.attempts + 1, timings
        job.save(update_fields=["status", "stage", "progress", "error", "started", "attempts", "timings"])
    scan = job.scan
    out_dir = job.output_dir
    services.remove_tree(out_dir)  # a redelivered job starts over
    out_dir.mkdir(parents=True)
    recorder = ProgressRecorder(job.id)
    started = time.monotonic()
    run = services.run_audit if job.is_audit else services.run_segmentation
    try:
        result = run(scan.engine_input, job.model_name, out_dir, progress=recorder, series=job.series_key or None)
        recorder.finish_stage()
        recorder("viewer", 99)
        services.prepare_viewer(out_dir)
        recorder.finish_stage()
        recorder("store", 99)
        if not job.is_audit:  # built now so that its checksum is recorded with the others
            services.structures_zip(out_dir, out_dir / "structures.zip")
        checksums = services.output_checksums(out_dir)
        recorder.finish_stage()
    except SoftTimeLimitExceeded:
        where = recorder.stage or "start-up"
        recorder.finish_stage()
        logger.warning("job %s stopped at its soft time limit during %s", job.id, where)
        services.remove_tree(out_dir)  # nothing partial is kept, nor offered
        _fail(
            job,
            time_limit_message(job.is_audit, settings.DELINEO_JOB_SOFT_TIME_LIMIT),
            {**timings, **recorder.stage_seconds, "total": round(time.monotonic() - started, 3)},
        )
        return Job.Status.FAILED
    except services.DelineationError as exc:
        recorder.finish_stage()
        services.remove_tree(out_dir)  # a refused input or export: nothing partial is kept
        _fail(job, exc.message, {**timings, **recorder.stage_seconds, "total": round(time.monotonic() - started, 3)})
        return Job.Status.FAILED
    except Exception as exc:
        where = recorder.stage or "start-up"
        recorder.finish_stage()
        logger.exception("job %s failed", job.id)
        _fail(
            job,
            f"Internal error during {where}: {type(exc).__name__}: {exc}",
            {**timings, **recorder.stage_seconds, "total": round(time.monotonic() - started, 3)},
        )
        raise
    job.timings = {
        **timings,
        **{k: round(v, 3) for k, v in result.timings_s.items()},
        "viewer": recorder.stage_seconds.get("viewer", 0.0),
        "store": recorder.stage_seconds.get("store", 0.0),
        "total": round(time.monotonic() - started, 3),
    }
    job.status, job.stage, job.progress = Job.Status.SUCCEEDED, "done", 100
    job.structures = result.structures  # for an audit, the model's delineation (the audit is audit.json)
    job.weights_sha256 = result.weights_sha256
    job.notes = result.notes
    if isinstance(result, services.AuditEngineResult):
        job.input_kind = "dicom"  # the engine audits only DICOM series
    else:
        job.input_kind = result.input_kind
        job.rtstruct_roundtrip = result.rtstruct_roundtrip
    job.result_dir = str(out_dir.relative_to(settings.MEDIA_ROOT))
    job.checksums = checksums
    job.finished = timezone.now()
    job.save()
    return Job.Status.SUCCEEDED


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
    return execute_job(job_id)


def queue_job(  # noqa: ANN001 (a user and a Scan)
    owner, scan, model_name: str, series_key: str = "", kind: str = Job.Kind.SEGMENT
) -> Job:
    """Create a job (a delineation, or with ``kind="audit"`` a contour audit) on ``scan``
    and queue it once the transaction commits."""
    with transaction.atomic():
        job = Job.objects.create(owner=owner, scan=scan, model_name=model_name, series_key=series_key, kind=kind)
        submit(job)
    return job


def submit(job: Job) -> None:
    """Queue ``job`` once the current transaction commits."""
    job_id = str(job.id)

    def send() -> None:
        try:
            run_job.delay(job_id)
        except Exception as exc:  # broker down: say so on the job instead of leaving it queued
            logger.exception("could not queue job %s", job_id)
            Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(
                status=Job.Status.FAILED,
                error=f"The job could not be queued (task queue unavailable: {type(exc).__name__}).",
                finished=timezone.now(),
            )

    transaction.on_commit(send)
