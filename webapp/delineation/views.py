"""Pages: upload, job list and viewer. The pages talk to the REST API from plain JS;
the upload form also posts here when JavaScript is off."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from webapp.delineation import tasks
from webapp.delineation.forms import UploadForm
from webapp.delineation.models import Job
from webapp.delineation.uploads import UploadError, accept_upload


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return redirect("job-list")


@login_required
def upload(request: HttpRequest) -> HttpResponse:
    form = UploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        try:
            with transaction.atomic():
                scan = accept_upload(
                    request.user,
                    form.cleaned_data["file"],
                    form.cleaned_data["files"],
                    name=request.POST.get("name", ""),
                )
                job = Job.objects.create(owner=request.user, scan=scan, model_name=form.cleaned_data["model"])
                tasks.submit(job)
        except UploadError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, f"Uploaded {scan.name}; the job is queued.")
            return redirect("job-list")
    return render(
        request,
        "delineation/upload.html",
        {"form": form, "max_upload_mib": settings.DELINEO_MAX_UPLOAD_BYTES // 2**20},
    )


@login_required
def job_list(request: HttpRequest) -> HttpResponse:
    jobs = Job.objects.filter(owner=request.user).select_related("scan")[:200]
    return render(request, "delineation/jobs.html", {"jobs": jobs})


@login_required
def viewer(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    job = get_object_or_404(Job.objects.select_related("scan"), pk=job_id, owner=request.user)
    return render(request, "delineation/viewer.html", {"job": job})
