"""Pages: upload, scan (pre-flight report, series and model choice, patient, sharing),
patients (with the "Adapt" action: propagate a planning scan's contours to a daily scan),
job list and viewer.

The pages talk to the REST API from plain JS; the upload, scan and patient forms also post
here when JavaScript is off. A delineation is queued only from the scan page, after the
physician has seen the pre-flight report of the upload. Scans and jobs are looked up through
``visible_to`` (models.py), as in the API: another user's are 404. Patients are never
shared: the patient pages show the user's own only.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Max
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from webapp.delineation import access_log, engine_client, rules, sharing, tasks
from webapp.delineation.engine_client import ResultFolder
from webapp.delineation.forms import UploadForm
from webapp.delineation.models import AccessEvent, Job, Patient, Scan, Team
from webapp.delineation.patients import PatientIdError, clean_patient_id, patient_for
from webapp.delineation.serializers import JobCreateSerializer, propagation_fields
from webapp.delineation.upload_limits import refusal_of
from webapp.delineation.uploads import UploadError, accept_upload


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
                patient_id=request.POST.get("patient_id", ""),
                patient_label=request.POST.get("patient_label", ""),
                deidentify=form.cleaned_data["deidentify"],
            )
        except UploadError as exc:
            form.add_error(None, exc.message)
        else:
            access_log.record(request, AccessEvent.Action.UPLOAD, scan)
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


def _visible_scan(request: HttpRequest, scan_id: uuid.UUID) -> Scan:
    return get_object_or_404(Scan.objects.visible_to(request.user).select_related("owner"), pk=scan_id)


def _scan_page(request: HttpRequest, scan: Scan, error: str = "", status: int = 200) -> HttpResponse:
    report = scan.preflight if isinstance(scan.preflight, dict) else {}
    usable = rules.usable_series(report)
    structure_sets = rules.structure_sets(report)
    is_owner = scan.is_owner(request.user)
    shared_with = list(scan.shared_with.all())
    return render(
        request,
        "delineation/scan.html",
        {
            "scan": scan,
            "report": report,
            "usable": usable,
            "selected": request.POST.get("series") or report.get("selected") or (usable[0] if len(usable) == 1 else ""),
            "models": engine_client.available_models(),
            "domain_notes": engine_client.domain_notes(report),
            "structure_sets": structure_sets,
            "audit_models": engine_client.audit_models() if structure_sets else [],
            "audit_needs_critic": rules.AUDIT_NEEDS_CRITIC,
            "error": error,
            "is_owner": is_owner,
            "shared_with": shared_with,
            "shareable_teams": Team.objects.filter(members=request.user).exclude(pk__in=[t.pk for t in shared_with])
            if is_owner
            else [],
        },
        status=status,
    )


@login_required
def scan_detail(request: HttpRequest, scan_id: uuid.UUID) -> HttpResponse:
    """The pre-flight report of an upload, and the form that queues a job on it: a
    delineation, or (when the upload holds a structure set) a contour audit; and the form
    that sets its patient. A team member the scan is shared with sees the report but
    queues nothing and sets no patient (403)."""
    scan = _visible_scan(request, scan_id)
    if request.method != "POST":
        access_log.record(request, AccessEvent.Action.VIEW, scan)
        return _scan_page(request, scan)
    setting_patient = "patient_id" in request.POST
    try:
        sharing.check_owner(scan, request.user, "set the patient of" if setting_patient else "start a job on")
    except sharing.SharingRefused as exc:
        return _scan_page(request, scan, exc.message, exc.status)
    if setting_patient:
        return _set_patient(request, scan)
    kind = Job.Kind.AUDIT if request.POST.get("kind") == Job.Kind.AUDIT else Job.Kind.SEGMENT
    model = request.POST.get("audit_model" if kind == Job.Kind.AUDIT else "model", "")
    data = JobCreateSerializer(
        data={"scan": str(scan.id), "model": model, "series": request.POST.get("series", ""), "kind": kind},
        context={"request": request},
    )
    if not data.is_valid():
        return _scan_page(request, scan, _errors_text(data.errors))
    job, created = tasks.queue_job(
        request.user, scan, data.validated_data["model"], data.validated_data["series"], kind
    )
    what = "contour audit" if kind == Job.Kind.AUDIT else "job"
    if created:
        access_log.record(request, AccessEvent.Action.QUEUE, job)
        messages.success(request, f"The {what} on {scan.name} is queued.")
    else:  # sent twice (a double click): one job
        messages.info(request, f"The same {what} on {scan.name} is already {job.status}; it was not queued again.")
    return redirect(f"{reverse('job-list')}?new={job.id}")


def _set_patient(request: HttpRequest, scan: Scan) -> HttpResponse:
    try:
        patient_id = clean_patient_id(request.POST["patient_id"])
    except PatientIdError as exc:
        return _scan_page(request, scan, str(exc))
    scan.patient = patient_for(request.user, patient_id, request.POST.get("patient_label", ""))
    scan.save(update_fields=["patient"])
    messages.success(request, "The scan's patient is saved." if scan.patient else "The scan has no patient now.")
    return redirect("scan-detail", scan_id=scan.id)


def _change_sharing(request: HttpRequest, scan_id: uuid.UUID, change, done: str) -> HttpResponse:
    scan = _visible_scan(request, scan_id)
    try:
        team = change(request, scan, request.POST.get("team", ""))
    except sharing.SharingRefused as exc:
        return _scan_page(request, scan, exc.message, exc.status)
    messages.success(request, done.format(team=team.name))
    return redirect("scan-detail", scan_id=scan.id)


@login_required
@require_POST
def scan_share(request: HttpRequest, scan_id: uuid.UUID) -> HttpResponse:
    """The scan page's "Share" button (owner only, as ``POST /api/scans/{id}/share/``)."""
    return _change_sharing(request, scan_id, sharing.share, "The scan is shared with {team}.")


@login_required
@require_POST
def scan_unshare(request: HttpRequest, scan_id: uuid.UUID) -> HttpResponse:
    """The scan page's "Stop sharing" button (owner only, as ``POST /api/scans/{id}/unshare/``)."""
    return _change_sharing(request, scan_id, sharing.unshare, "The scan is no longer shared with {team}.")


@login_required
def patient_list(request: HttpRequest) -> HttpResponse:
    patients = (
        Patient.objects.filter(owner=request.user)
        .annotate(scan_count=Count("scans"), last_scan=Max("scans__created"))
        .order_by("-last_scan", "-created")
    )
    ungrouped = request.user.scans.filter(patient=None).count()  # the user's own scans: patients are never shared
    return render(request, "delineation/patients.html", {"patients": patients, "ungrouped": ungrouped})


def contour_sources(scans: list[Scan]) -> list[tuple[str, str]]:
    """(value, label) of each planning-contour source among ``scans``: the RTSTRUCTs of each
    upload ("rtstruct:<scan>:<SOP Instance UID>") and each succeeded delineation ("job:<job>")."""
    sources = []
    for scan in scans:
        for rs in rules.structure_sets(scan.preflight if isinstance(scan.preflight, dict) else None):
            rois = ", ".join(rs.get("rois") or []) or "no ROI"
            sources.append((f"rtstruct:{scan.id}:{rs.get('sop_instance_uid')}", f"{scan.name}: RTSTRUCT ({rois})"))
        for job in scan.jobs.all():
            if job.kind == Job.Kind.SEGMENT and job.status == Job.Status.SUCCEEDED:
                when = job.created.strftime("%Y-%m-%d %H:%M")
                sources.append((f"job:{job.id}", f"{scan.name}: delineation by {job.model_name} ({when})"))
    return sources


def _adapt_request(post, scans: list[Scan]) -> dict:
    """The API's job request for the Adapt form: the planning scan comes with the contours chosen."""
    data = {"scan": post.get("daily_scan", ""), "model": post.get("model", ""), "kind": Job.Kind.PROPAGATE}
    kind, _, rest = post.get("contours", "").partition(":")
    if kind == "rtstruct":
        data["planning_scan"], _, data["contours_rtstruct"] = rest.partition(":")
    elif kind == "job":
        data["contours_job"] = rest
        source = next((j for s in scans for j in s.jobs.all() if str(j.id) == rest), None)
        data["planning_scan"] = str(source.scan_id) if source else ""
    return data


@login_required
def patient_detail(request: HttpRequest, patient_id: uuid.UUID) -> HttpResponse:
    """A patient's scans and the Adapt action: the planning scan with its contours, the daily
    scan and the propagation method; queues a propagation job."""
    patient = get_object_or_404(Patient, pk=patient_id, owner=request.user)
    scans = list(patient.scans.prefetch_related("jobs"))
    error = ""
    if request.method == "POST":
        data = JobCreateSerializer(data=_adapt_request(request.POST, scans), context={"request": request})
        if data.is_valid():
            v = data.validated_data
            job, created = tasks.queue_job(
                request.user, v["scan"], v["model"], v["series"], Job.Kind.PROPAGATE, **propagation_fields(v)
            )
            if created:
                access_log.record(request, AccessEvent.Action.QUEUE, job)
                messages.success(request, f"The contour propagation onto {v['scan'].name} is queued.")
            else:
                messages.info(
                    request,
                    f"The same propagation onto {v['scan'].name} is already {job.status}; it was not queued again.",
                )
            return redirect(f"{reverse('job-list')}?new={job.id}")
        error = _errors_text(data.errors)
    else:
        access_log.record(request, AccessEvent.Action.VIEW, patient)
    propagations = Job.objects.visible_to(request.user).filter(kind=Job.Kind.PROPAGATE, scan__patient=patient)
    return render(
        request,
        "delineation/patient.html",
        {
            "patient": patient,
            "scans": scans,
            "sources": contour_sources(scans),
            "models": engine_client.propagation_models(),
            "recommended": rules.RECOMMENDED_PROPAGATION_MODEL,
            "propagations": propagations.select_related("scan", "planning_scan")[:50],
            "selected": request.POST,
            "error": error,
        },
    )


@login_required
def job_list(request: HttpRequest) -> HttpResponse:
    jobs = Job.objects.visible_to(request.user).select_related("scan", "scan__owner")[:200]
    return render(request, "delineation/jobs.html", {"jobs": jobs})


@login_required
def viewer(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    job = get_object_or_404(Job.objects.visible_to(request.user).select_related("scan"), pk=job_id)
    access_log.record(request, AccessEvent.Action.VIEW, job)
    return render(request, "delineation/viewer.html", _viewer_context(request, job))


def _viewer_context(request: HttpRequest, job: Job, send_error: str = "") -> dict:
    from webapp.delineation.dicom.send import destinations_of

    can_send = (
        job.scan.is_owner(request.user)
        and job.status == Job.Status.SUCCEEDED
        and ResultFolder.RTSTRUCT in job.checksums
    )
    # Owners correct and approve contours; team members see the revision history only.
    can_edit = job.scan.is_owner(request.user) and job.status == Job.Status.SUCCEEDED and not job.is_audit
    return {
        "job": job,
        "destinations": destinations_of(request.user) if can_send else [],
        "send_error": send_error,
        "can_edit": can_edit,
    }


@login_required
@require_POST
def job_send(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    """The viewer's "Send to" button: the job's RTSTRUCT to one of the user's DICOM destinations."""
    from webapp.delineation.dicom import send as dicom_send

    job = get_object_or_404(Job.objects.visible_to(request.user).select_related("scan", "scan__owner"), pk=job_id)
    try:
        acknowledged = request.POST.get("acknowledge") == Job.ACKNOWLEDGE_OUTSIDE_DOMAIN
        record, created = dicom_send.send_on_request(
            job, request.user, request.POST.get("destination", ""), acknowledged
        )
    except dicom_send.SendRefused as exc:
        return render(request, "delineation/viewer.html", _viewer_context(request, job, exc.message), status=exc.status)
    if created:
        if job.outside_domain:
            access_log.record(request, AccessEvent.Action.ACKNOWLEDGE, job, filename=record.filename)
        access_log.record(request, AccessEvent.Action.SEND, job, filename=record.filename)
        messages.success(request, f"The RTSTRUCT is queued to be sent to {record.destination}.")
    else:
        messages.info(request, f"The RTSTRUCT is already queued to be sent to {record.destination}.")
    return redirect("job-viewer", job_id=job.id)
