"""``/api/jobs/{id}/<file>``: the downloads of a job, one route per entry of
``outputs.DOWNLOADS``, all served by :meth:`JobFiles.serve`.

A file is offered only while it matches the SHA-256 recorded when it was written (409
otherwise). A revision's RTSTRUCT or SEG and the RTSTRUCT for the daily scan of a
propagation are written by the worker (``exports``): the first request queues the
export and answers 202 with its state until it is written.
"""

from __future__ import annotations

import logging
import re

from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from webapp.delineation import access_log, engine_client, exports, outputs, revisions
from webapp.delineation.api.common import DETAIL, REVISION, detail
from webapp.delineation.models import AccessEvent, Export, Job, Revision
from webapp.delineation.outputs import DOWNLOADS, Download

logger = logging.getLogger(__name__)
_EXPORT = inline_serializer(
    "ExportQueued",
    {"detail": serializers.CharField(), "export": serializers.DictField(help_text="file, state, error, created")},
)


class JobFiles:
    """The file routes of ``api.jobs.JobViewSet``: a job's own outputs, its revisions', and
    the exports written after it."""

    def serve(self, request: Request, download: Download) -> Response:
        job = self.get_object()
        if download.key == "final_rtstruct" and not job.is_propagation:
            return detail("Only a contour propagation has an RTSTRUCT built from chosen contours.", 404)
        if job.status == Job.Status.FAILED:
            return detail(f"The job failed, so it has no results: {job.error}", 409)
        if job.status != Job.Status.SUCCEEDED or job.result_path is None:
            return detail(f"The job has not finished yet (status: {job.status}); try again later.", 409)
        if download.key == "structures_zip" and job.is_audit:
            return detail(
                "A contour audit writes the audit and the model's label map, not one mask per structure.", 404
            )
        if download.key == "final_rtstruct":
            return self._written_or_queued(job, download, download.file, job, "The RTSTRUCT for the daily scan")
        if not download.revisions:
            return self._optional(job, download)
        try:
            revision = revisions.find(job, request.query_params.get("revision"))
        except revisions.EditError as exc:
            return detail(exc.message, 400)
        if download.key == "labels":
            if revision.number == 0:
                return self._download(job, download, download.file)
            return self._download(job, download, revision.labels_file, revision.checksums)
        if download.key == "structures_zip":
            return self._structures_zip(job, download, revision)
        name, checksums = revisions.export_name(job, revision, download.file)
        if name == download.file or not self._job_has(job, download):
            return self._optional(job, download)  # the model's own file, or none for the model either
        problem = self._unacknowledged(job, download)
        if problem:
            return problem
        what = f"The {download.what} of revision {revision.number}"
        return self._written_or_queued(job, download, name, revision, what)

    def _structures_zip(self, job: Job, download: Download, revision: Revision) -> Response:
        if not job.checksums and not self._job_has(job, download):
            # A job finished before the zip was built with the outputs (and checksums recorded).
            outputs.structures_zip(job.result_path, job.result_path / download.file)
        try:
            name, checksums = revisions.export_of(job, revision, download.file)
        except engine_client.DelineationError as exc:
            return detail(f"The {download.what} of revision {revision.number} could not be written: {exc.message}", 409)
        return self._download(job, download, name, checksums)

    @staticmethod
    def _job_has(job: Job, download: Download) -> bool:
        return download.file in job.checksums or (job.result_path / download.file).exists()

    def _optional(self, job: Job, download: Download) -> Response:
        problem = self._unacknowledged(job, download)
        if problem:
            return problem
        if not self._job_has(job, download):  # a recorded output gone missing is damage (409), not this
            return detail(
                f"No {download.what} was written for this job. {outputs.missing_reason(job, download)}".strip(), 404
            )
        return self._download(job, download, download.file)

    def _written_or_queued(self, job: Job, download: Download, name: str, owner: Job | Revision, what: str) -> Response:
        """The export ``name`` if the worker wrote it (its checksums are ``owner``'s); otherwise
        queue it (202), or say why it failed (409)."""

        def checksums() -> dict[str, str]:
            return type(owner).objects.get(pk=owner.pk).checksums

        if name in checksums():
            return self._download(job, download, name, checksums())
        export = exports.latest(job, name)
        if export is not None and export.state == Export.State.FAILED:
            return detail(f"{what} could not be written: {export.error}", 409)
        if export is None or export.state == Export.State.DONE:  # none yet, or its inputs changed since
            export = exports.request(job, name)
        if name in checksums():  # an eager task queue (tests, embedded) wrote it at once
            return self._download(job, download, name, checksums())
        body = {"detail": f"{what} is being written; ask again in a moment.", "export": exports.state_of(export)}
        return Response(body, status=202)

    def _unacknowledged(self, job: Job, download: Download) -> Response | None:
        """409 for the RTSTRUCT or SEG (of any revision) of a job outside its model's domain
        unless the request acknowledges the warning; an acknowledgement is recorded."""
        if not download.acknowledged or not job.outside_domain:
            return None
        # A planning system would import these contours like any others: the physician
        # must say they read why the scan looks outside the model's domain.
        if self.request.query_params.get("acknowledge") != Job.ACKNOWLEDGE_OUTSIDE_DOMAIN:
            return detail(
                f"{job.domain_warning}. To download the {download.what} anyway, acknowledge "
                f"this warning (add ?acknowledge={Job.ACKNOWLEDGE_OUTSIDE_DOMAIN}).",
                409,
            )
        access_log.record(self.request, AccessEvent.Action.ACKNOWLEDGE, job, filename=download.file)
        return None

    def _download(self, job: Job, download: Download, name: str, checksums: dict[str, str] | None = None):
        """The output ``name`` of a succeeded job, if it still matches the SHA-256 recorded
        when it was written; otherwise 409 with a message (and the job id in the log).
        Outputs are renamed into place whole, so the file opened is never a partial one."""
        try:
            handle = outputs.open_verified(job.result_path, name, job.checksums if checksums is None else checksums)
        except outputs.DamagedOutput as exc:
            logger.error("job %s: stored output refused: %s", job.id, exc)
            return detail(
                f"The stored result {name} of this job is damaged: it no longer matches the file the job "
                "wrote (its SHA-256 checksum differs or it is missing), so it is not offered. "
                "Run the job again on the same scan (start a new job).",
                409,
            )
        if self.request.method == "GET":  # not the page's HEAD asking whether an export is written
            access_log.record(self.request, AccessEvent.Action.DOWNLOAD, job, filename=name)
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", job.scan.name).strip("._")[:80] or "scan"
        served = name.replace("revisions/", "revision").replace("/", "_")  # revisions/2/x: revision2_x
        return FileResponse(handle, as_attachment=True, filename=f"{safe}_{served}", content_type=download.content_type)


def _route(download: Download):
    body = OpenApiTypes.OBJECT if download.content_type == "application/json" else OpenApiTypes.BINARY
    responses = {
        (200, download.content_type): OpenApiResponse(body, description=download.what),
        404: DETAIL,
        409: DETAIL,
    }
    if download.revisions:
        responses[400] = DETAIL
    if download.key in ("rtstruct", "seg", "final_rtstruct"):
        responses[202] = OpenApiResponse(_EXPORT, description="Being written by the worker: ask again.")

    def route(self: JobFiles, request: Request, pk: str | None = None) -> Response:
        return self.serve(request, download)

    # Named before it is decorated: DRF maps the HTTP method to the action by this name.
    route.__name__ = route.__qualname__ = download.key
    route.__doc__ = download.description
    routed = action(detail=True, methods=["get"], url_path=download.url_path, url_name=download.url_name)(route)
    return extend_schema(parameters=[REVISION] if download.revisions else None, responses=responses)(routed)


for _download in DOWNLOADS:
    setattr(JobFiles, _download.key, _route(_download))
