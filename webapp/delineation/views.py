"""Pages: upload, scan (pre-flight report, series and model choice), job list and viewer.

The pages talk to the REST API from plain JS; the upload and scan forms also post here
when JavaScript is off. A job is queued only from the scan page, after the physician has
seen the pre-flight report of the upload.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse

from webapp.delineation import audit, services, tasks
from webapp.delineation.forms import UploadForm
from webapp.delineation.models import AccessEvent, Job, Scan
from webapp.delineation.serializers import JobCreateSerializer
from webapp.delineation.uploads import UploadError, accept_upload, refusal_of


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return redirect("job-list")


@login_required
def upload(request: HttpRequest) -> HttpResponse:
    form = UploadForm(request.POST or None, request.FILES or None)
    refusal = refusal_of(request)  # the size and file-count limits, applied while the body streamed in
    if refusal is not None:
        form.add_error(None, refusal.message)
    elif request.method == "POST" and form.is_valid():
        try:
            scan = accept_upload(
                request.user,
                form.cleaned_data["file"],
                form.cleaned_data["files"],
                name=request.POST.get("name", ""),
            )
        except UploadError as exc:
            form.add_error(None, exc.message)
        else:
            audit.record(request, AccessEvent.Action.UPLOAD, scan)
            return redirect("scan-detail", scan_id=scan.id)
    return render(
        request,
        "delineation/upload.html",
        {"form": form, "max_upload_mib": settings.DELINEO_MAX_UPLOAD_BYTES // 2**20},
        status=refusal.status if refusal is not None else 200,
    )


def _errors_text(errors) -> str:
    if isinstance(errors, dict):
        return " ".join(_errors_text(v) for v in errors.values())
    if isinstance(errors, list):
        return " ".join(_errors_text(v) for v in errors)
    return str(errors)


@login_required
def scan_detail(request: HttpRequest, scan_id: uuid.UUID) -> HttpResponse:
    """The pre-flight report of an upload, and the form that queues a job on it: a
    delineation, or (when the upload holds a structure set) a contour audit."""
    scan = get_object_or_404(Scan, pk=scan_id, owner=request.user)
    report = scan.preflight if isinstance(scan.preflight, dict) else {}
    usable = services.usable_series(report)
    structure_sets = services.structure_sets(report)
    error = ""
    if request.method == "POST":
        kind = Job.Kind.AUDIT if request.POST.get("kind") == Job.Kind.AUDIT else Job.Kind.SEGMENT
        model = request.POST.get("audit_model" if kind == Job.Kind.AUDIT else "model", "")
        data = JobCreateSerializer(
            data={"scan": str(scan.id), "model": model, "series": request.POST.get("series", ""), "kind": kind},
            context={"request": request},
        )
        if data.is_valid():
            job, created = tasks.queue_job(
                request.user, scan, data.validated_data["model"], data.validated_data["series"], kind
            )
            what = "contour audit" if kind == Job.Kind.AUDIT else "job"
            if created:
                audit.record(request, AccessEvent.Action.QUEUE, job)
                messages.success(request, f"The {what} on {scan.name} is queued.")
            else:  # sent twice (a double click): one job
                messages.info(
                    request, f"The same {what} on {scan.name} is already {job.status}; it was not queued again."
                )
            return redirect(f"{reverse('job-list')}?new={job.id}")
        error = _errors_text(data.errors)
    else:
        audit.record(request, AccessEvent.Action.VIEW, scan)
    return render(
        request,
        "delineation/scan.html",
        {
            "scan": scan,
            "report": report,
            "usable": usable,
            "selected": request.POST.get("series") or report.get("selected") or (usable[0] if len(usable) == 1 else ""),
            "models": services.available_models(),
            "structure_sets": structure_sets,
            "audit_models": services.audit_models() if structure_sets else [],
            "audit_needs_critic": services.AUDIT_NEEDS_CRITIC,
            "error": error,
        },
    )


@login_required
def job_list(request: HttpRequest) -> HttpResponse:
    jobs = Job.objects.filter(owner=request.user).select_related("scan")[:200]
    return render(request, "delineation/jobs.html", {"jobs": jobs})


@login_required
def viewer(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    job = get_object_or_404(Job.objects.select_related("scan"), pk=job_id, owner=request.user)
    audit.record(request, AccessEvent.Action.VIEW, job)
    return render(request, "delineation/viewer.html", {"job": job})
