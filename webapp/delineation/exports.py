"""Exports written after a job, in the worker: a request queues one, the page shows its
progress, the download serves it once written.

* ``final/rtstruct.dcm``: the RTSTRUCT for the daily scan of a propagation, built from the
  physician's ``Job.choices`` (``engine.io.exports.write_final_rtstruct``), its checksums
  kept with the job's own;
* ``revisions/<n>/rtstruct.dcm`` and ``seg.dcm``: a revision's RTSTRUCT or DICOM SEG
  (``revisions.export_of``), its checksums kept with the revision's.

Both need the engine (the RTSTRUCT's round-trip check rasterises every contour), which
the web process does not load. Each build holds the lock of the row whose checksums it
records (the job's, the revision's), so a change of the choices or an approval waits
for it and then drops what it made.
"""

from __future__ import annotations

import logging
from uuid import UUID

from django.db import transaction
from django.utils import timezone

from webapp.delineation import engine_client, outputs
from webapp.delineation.models import Export, Job
from webapp.delineation.redact import traceback_without_messages

logger = logging.getLogger(__name__)


def latest(job: Job, name: str) -> Export | None:
    """The newest export of ``name`` for ``job``."""
    return Export.objects.filter(job=job, name=name).order_by("-created", "-id").first()


def request(job: Job, name: str) -> Export:
    """Queue the export ``name`` of ``job`` (once the transaction commits), unless one is
    queued already; returns the queued one."""
    from webapp.delineation.tasks import submit_export

    with transaction.atomic():
        queued = Export.objects.select_for_update().filter(job=job, name=name, state=Export.State.QUEUED).first()
        if queued is not None:
            return queued
        export = Export.objects.create(job=job, name=name)
        submit_export(export.pk)
    return export


def run(export_id: int) -> str:
    """Write a queued export (the Celery task ``delineation.build_export``); returns its
    state. Idempotent: an export no longer queued is left alone."""
    with transaction.atomic():
        export = Export.objects.select_for_update().select_related("job").filter(pk=export_id).first()
        if export is None or export.state != Export.State.QUEUED:
            return export.state if export is not None else "missing"
        export.state = Export.State.RUNNING
        export.save(update_fields=["state"])
    try:
        build(export.job, export.name)
    except engine_client.DelineationError as exc:
        logger.warning("job %s: export %s not written", export.job_id, export.name)
        return _finish(export, Export.State.FAILED, exc.message)
    except Exception as exc:
        logger.error("job %s: export %s failed:\n%s", export.job_id, export.name, traceback_without_messages(exc))
        _finish(export, Export.State.FAILED, f"Internal error while writing it ({type(exc).__name__}).")
        raise
    return _finish(export, Export.State.DONE, "")


def _finish(export: Export, state: str, error: str) -> str:
    Export.objects.filter(pk=export.pk).update(state=state, error=error, finished=timezone.now())
    return state


def build(job: Job, name: str) -> None:
    """Write the export ``name`` of ``job`` now, in this process, unless it is written.

    Raises:
        engine_client.DelineationError: it cannot be written (message for the physician).
    """
    from webapp.delineation import revisions

    if name == outputs.FINAL_RTSTRUCT:
        _build_final(job.pk)
        return
    folder, number, filename = name.split("/")
    revision = job.revisions.filter(number=int(number)).first() if folder == "revisions" else None
    if revision is None:
        raise ValueError(f"not an export of job {job.pk}: {name}")
    revisions.export_of(job, revision, filename)


def _build_final(job_id: UUID) -> None:
    with transaction.atomic():
        job = Job.objects.select_for_update().select_related("scan").get(pk=job_id)  # one build at a time
        if outputs.FINAL_RTSTRUCT in job.checksums:
            return
        folder = engine_client.ResultFolder(job.result_path)
        final = engine_client.write_final_rtstruct(
            folder, job.scan.engine_input, job.series_key, job.choices, (job.model_name, job.weights_sha256)
        )
        written = outputs.output_checksums(final.path, prefix=f"{folder.FINAL}/")
        job.checksums = {**without_final(job.checksums), **written}
        job.save(update_fields=["checksums"])


def without_final(checksums: dict[str, str]) -> dict[str, str]:
    """The job's checksums without those of the final RTSTRUCT and its companions."""
    return {k: v for k, v in checksums.items() if not k.startswith(f"{engine_client.ResultFolder.FINAL}/")}


def state_of(export: Export | None) -> dict | None:
    """An export as the API and the pages show it."""
    if export is None:
        return None
    return {"file": export.name, "state": export.state, "error": export.error, "created": export.created}
