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

from webapp.delineation import services, tasks
from webapp.delineation.forms import UploadForm
from webapp.delineation.models import Job, Scan, scan_dir
from webapp.delineation.uploads import UploadError, store_upload


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return redirect("job-list")


@login_required
def upload(request: HttpRequest) -> HttpResponse:
    form = UploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        scan_id = uuid.uuid4()
        directory = scan_dir(scan_id)
        try:
            stored = store_upload(directory, request.FILES.get("file"), request.FILES.getlist("files"), [])
            preflight = services.preflight(stored.input_path) if settings.DELINEO_UPLOAD_PREFLIGHT else None
            with transaction.atomic():
                scan = Scan.objects.create(
                    id=scan_id,
                    owner=request.user,
                    name=stored.name,
                    input_kind=stored.input_kind,
                    input_path=str(stored.input_path.relative_to(settings.MEDIA_ROOT)),
                    file_count=stored.file_count,
                    size_bytes=stored.size_bytes,
                    preflight={**(preflight or {}), "upload": stored.notes},
                )
                job = Job.objects.create(owner=request.user, scan=scan, model_name=form.cleaned_data["model"])
                tasks.submit(job)
        except UploadError as exc:
            form.add_error(None, exc.message)
        except services.PreflightError as exc:
            services.remove_tree(directory)
            form.add_error(None, f"The upload was not accepted: {exc.message}")
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
