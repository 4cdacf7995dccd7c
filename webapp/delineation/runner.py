"""Running one job in the worker (the task ``delineation.run_job``). A job can run twice
without harm: a finished job is left alone, a half-run one starts over in a fresh output
folder, and one delivered again while it still runs elsewhere is left to that run. A job
started ``DELINEO_JOB_MAX_ATTEMPTS`` times is failed instead of run again, one that runs
past its time limit is stopped and failed, and one that fills the disk is failed, each
with a message for the physician; a failed job keeps no output file (docs/security.md,
"No lost work").
"""

from __future__ import annotations

import errno
import fcntl
import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from uuid import UUID

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from webapp.delineation import engine_client, outputs, viewer
from webapp.delineation.engine_client import ResultFolder
from webapp.delineation.models import Job, Scan
from webapp.delineation.redact import traceback_without_messages

logger = logging.getLogger(__name__)


class JobFailed(Exception):
    """Raised by a job whose engine failed unexpectedly, so that Celery records the task as
    failed; it names the job and the error's type, never its message (see redact.py)."""


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


def _what(kind: str) -> str:
    return Job.Kind(kind).label.lower() if kind in Job.Kind.values else "job"


def time_limit_message(kind: str, seconds: float) -> str:
    """Why a job of ``kind`` that ran past its time limit failed, for the physician."""
    minutes = max(1, round(seconds / 60))
    return (
        f"The {_what(kind)} took longer than {minutes} minutes and was stopped. Try again later; "
        "if it happens again, ask the administrator to check the workers or to raise the time limit."
    )


def attempts_message(kind: str, attempts: int) -> str:
    """Why a job of ``kind`` whose worker died ``attempts`` times is not run again, for the physician."""
    return (
        f"The {_what(kind)} was started {attempts} times and each time stopped before it finished "
        "(the worker processing it stopped, for example out of memory), so it was not started again. "
        "If this happens only with this scan, it may be too large for this server; "
        "otherwise ask the administrator to check the workers."
    )


def disk_full_message(kind: str) -> str:
    """Why a job of ``kind`` that found no space left to write its outputs failed, for the physician."""
    return (
        f"The server ran out of disk space while writing the results of the {_what(kind)}, so it was "
        "stopped and none of its files were kept. Ask the administrator to free disk space, then start the job again."
    )


def _out_of_space(exc: BaseException) -> bool:
    """True when ``exc``, or an exception it was raised from, is "no space left" (ENOSPC)
    or "disk quota exceeded" (EDQUOT): writers such as nibabel or pydicom raise the
    file system's OSError as it is, but a library may wrap it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def fail_after_time_limit(job_id: str | UUID, seconds: float) -> None:
    """Fail a job whose process was killed at its hard time limit, and remove its partial outputs."""
    job = Job.objects.select_related("scan").filter(pk=job_id).first()
    if job is None or job.is_finished:
        return
    updated = (
        Job.objects.filter(pk=job_id)
        .exclude(status__in=Job.FINISHED)
        .update(status=Job.Status.FAILED, error=time_limit_message(job.kind, seconds), finished=timezone.now())
    )
    if updated:
        logger.warning("job %s killed at its hard time limit (%ss)", job_id, seconds)
        outputs.remove_tree(job.output_dir)
        results_to_send(Job.objects.get(pk=job_id))


def _fail(job: Job, message: str, timings: dict) -> None:
    """Mark ``job`` failed with ``message`` and delete its output folder: a failed job
    keeps no file, so nothing partial is listed or offered (and the space is freed)."""
    outputs.remove_tree(job.output_dir)
    job.status = Job.Status.FAILED
    job.error = message
    job.timings = timings
    job.finished = timezone.now()
    job.save(update_fields=["status", "error", "timings", "finished"])
    results_to_send(job)


@contextmanager
def _run_lock(job: Job) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``jobs/<job id>.lock`` (next to the job's output
    folder) while the job runs; yields False, at once, when another process holds it.

    The kernel releases the lock when its process ends, however it ends (SIGKILL, out of
    memory), so a job found running with its lock free was left by a dead process. On
    shared storage the file system must support locks (local disks, NFS v4). Raises
    OSError when the lock file cannot be created (e.g. the disk is full).
    """
    path = job.output_dir.with_name(f"{job.id}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True  # released when the file is closed


def execute_job(job_id: str | UUID) -> str:
    """Run one job to completion; returns its final status.

    Idempotent: a finished job is left alone; a job found running starts over in an
    empty output folder if the process that ran it died (its worker was killed and the
    broker delivered it again), unless it was already started ``DELINEO_JOB_MAX_ATTEMPTS``
    times: then it is failed with a message. A job still running in another process (the
    broker delivered it twice, e.g. after a lost connection) is left to that process and
    this delivery is dropped: ``running`` is returned. On success the SHA-256 of every
    output is recorded (``Job.checksums``); downloads verify it.
    """
    found = Job.objects.select_related("scan").filter(pk=job_id).first()
    if found is None:
        logger.warning("job %s no longer exists", job_id)
        return "missing"
    with ExitStack() as held:
        try:
            mine = held.enter_context(_run_lock(found))
        except OSError as exc:
            if not _out_of_space(exc):
                raise
            # No lock file could be made, so no other process holds one: nobody runs the job.
            logger.error("job %s: no space left on the device for its lock file", job_id)
            Job.objects.filter(pk=job_id).exclude(status__in=Job.FINISHED).update(
                status=Job.Status.FAILED, error=disk_full_message(found.kind), finished=timezone.now()
            )
            return Job.Status.FAILED
        if not mine:
            logger.warning("job %s is running in another worker process; this delivery of it is dropped", job_id)
            return Job.Status.RUNNING
        status = _run(job_id)
    if status == "missing" and not Scan.objects.filter(pk=found.scan_id).exists():
        outputs.remove_tree(found.scan.directory)  # deleted meanwhile: only the lock file was left there
    return status


def _run(job_id: str | UUID) -> str:
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
            _fail(job, attempts_message(job.kind, job.attempts), job.timings)  # deletes what they left
            return Job.Status.FAILED
        now = timezone.now()
        timings = {"queue": round((now - job.created).total_seconds(), 3)}
        job.status, job.stage, job.progress, job.error = Job.Status.RUNNING, "ingest", 0, ""
        job.started, job.attempts, job.timings = now, job.attempts + 1, timings
        job.save(update_fields=["status", "stage", "progress", "error", "started", "attempts", "timings"])
    scan = job.scan
    out_dir = job.output_dir
    outputs.remove_tree(out_dir)  # a redelivered job starts over
    out_dir.mkdir(parents=True)
    recorder = ProgressRecorder(job.id)
    started = time.monotonic()
    try:
        if job.is_propagation:
            result = _propagate(job, out_dir, recorder)
        else:
            run = engine_client.run_audit if job.is_audit else engine_client.run_segmentation
            result = run(scan.engine_input, job.model_name, out_dir, progress=recorder, series=job.series_key or None)
        recorder.finish_stage()
        recorder("viewer", 99)
        viewer.prepare_viewer(out_dir)
        recorder.finish_stage()
        recorder("store", 99)
        if not job.is_audit:  # built now so that its checksum is recorded with the others
            outputs.structures_zip(out_dir, out_dir / ResultFolder.STRUCTURES_ZIP)
        checksums = outputs.output_checksums(out_dir)
        recorder.finish_stage()
    except SoftTimeLimitExceeded:
        where = recorder.stage or "start-up"
        recorder.finish_stage()
        logger.warning("job %s stopped at its soft time limit during %s", job.id, where)
        _fail(
            job,
            time_limit_message(job.kind, settings.DELINEO_JOB_SOFT_TIME_LIMIT),
            {**timings, **recorder.stage_seconds, "total": round(time.monotonic() - started, 3)},
        )
        return Job.Status.FAILED
    except engine_client.DelineationError as exc:
        recorder.finish_stage()
        outputs.remove_tree(out_dir)  # a refused input or export: nothing partial is kept
        _fail(job, exc.message, {**timings, **recorder.stage_seconds, "total": round(time.monotonic() - started, 3)})
        return Job.Status.FAILED
    except Exception as exc:
        where = recorder.stage or "start-up"
        recorder.finish_stage()
        if _out_of_space(exc):  # not a bug, and running it again now would fail the same way
            logger.error("job %s: no space left on the device during %s", job.id, where)
            _fail(
                job,
                disk_full_message(job.kind),
                {**timings, **recorder.stage_seconds, "total": round(time.monotonic() - started, 3)},
            )
            return Job.Status.FAILED
        logger.error("job %s failed during %s:\n%s", job.id, where, traceback_without_messages(exc))
        _fail(
            job,
            f"Internal error during {where}: {type(exc).__name__}: {exc}",
            {**timings, **recorder.stage_seconds, "total": round(time.monotonic() - started, 3)},
        )
        # Celery logs what the task raises: not the engine's message, which may quote the upload's path.
        raise JobFailed(f"job {job.id} failed during {where}: {type(exc).__name__}") from None
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
    if isinstance(result, engine_client.AuditEngineResult):
        job.input_kind = "dicom"  # the engine audits only DICOM series
    elif isinstance(result, engine_client.PropagationEngineResult):
        job.input_kind = result.input_kind
    else:
        job.input_kind = result.input_kind
        job.rtstruct_roundtrip = result.rtstruct_roundtrip
        job.domain = result.domain
    job.result_dir = str(out_dir.relative_to(settings.MEDIA_ROOT))
    job.checksums = checksums
    job.finished = timezone.now()
    job.save()
    results_to_send(job)
    return Job.Status.SUCCEEDED


def results_to_send(job: Job) -> None:
    """Queue (succeeded) or fail (failed) the DICOM sends planned for ``job``; a problem here
    never changes the job's own outcome."""
    try:
        from webapp.delineation.dicom import send

        send.job_finished(job)
    except Exception as exc:
        logger.error("job %s: its result sends could not be queued:\n%s", job.id, traceback_without_messages(exc))


def _propagate(job: Job, out_dir: Path, progress: ProgressRecorder) -> engine_client.PropagationEngineResult:
    """Run a propagation job: its planning scan's contours (an RTSTRUCT copied out of the
    upload next to the output folder, or a delineation's verified outputs) onto its scan."""
    planning = job.planning_scan
    if planning is None:
        raise engine_client.DelineationError("The planning scan of this propagation was deleted; start a new one.")
    inputs = out_dir.with_name(f"{out_dir.name}.inputs")  # not an output: no checksum, not offered
    outputs.remove_tree(inputs)
    inputs.mkdir(parents=True)
    try:
        source = job.contours_job
        if source is not None:
            if source.status != Job.Status.SUCCEEDED or source.result_path is None:
                raise engine_client.DelineationError("The delineation chosen as planning contours has no result.")
            try:
                outputs.verify_outputs(
                    source.result_path, (ResultFolder.LABELS, ResultFolder.STRUCTURES), source.checksums
                )
            except outputs.DamagedOutput:
                logger.error("job %s: the contours of job %s are damaged", job.id, source.id)
                raise engine_client.DelineationError(
                    "The stored result of the delineation chosen as planning contours is damaged "
                    "(it no longer matches the files that job wrote); delineate the planning scan again."
                ) from None
            contours = source.result_path
        elif job.contours_rtstruct:
            contours = engine_client.planning_rtstruct(
                planning.engine_input, job.contours_rtstruct, inputs / "planning_rtstruct.dcm"
            )
        else:
            raise engine_client.DelineationError(
                "The planning contours of this propagation were deleted; start a new one."
            )
        return engine_client.run_propagation(
            job.scan.engine_input, planning.engine_input, contours, job.model_name, out_dir, progress
        )
    finally:
        outputs.remove_tree(inputs)
