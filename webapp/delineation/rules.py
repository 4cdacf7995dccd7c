"""Rules of a job request, shared by the API and the pages: the series to delineate, the
model, what a contour audit needs and what a propagation needs (two scans of one patient,
each with one image series, and planning contours), read from the uploads' pre-flight
reports. A refusal names the field it is about and says why, for the physician.
"""

from __future__ import annotations

from webapp.delineation import engine_client
from webapp.delineation.models import Job, Scan

AUDIT_NEEDS_CRITIC = (
    "An audit needs a model that ships a contour-quality critic (QAM), such as hn-rt; "
    "no model on this server has one yet."
)
# Preselected in the Adapt form: the most accurate method on the pairs of docs/registration.md
# (the shipped joint models do not yet improve on their affine pre-alignment).
RECOMMENDED_PROPAGATION_MODEL = "elastix-bspline"


class RequestRefused(Exception):
    """A job request that breaks a rule: ``errors`` maps each field to why."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors


def check_request(attrs: dict) -> dict:
    """Check a job request (scan, model, series, kind and the propagation fields); returns
    it with the series to use. Raises :class:`RequestRefused`."""
    kind = attrs.get("kind", Job.Kind.SEGMENT)
    check_model(attrs["model"], kind)
    attrs["series"] = choose_series(attrs)
    if kind == Job.Kind.AUDIT:
        check_audit(attrs["scan"], attrs["model"])
    if kind == Job.Kind.PROPAGATE:
        check_propagation(attrs)
    else:
        for field in ("planning_scan", "contours_rtstruct", "contours_job"):
            if attrs.get(field):
                raise RequestRefused({field: "Only a propagation (kind 'propagate') takes this."})
    return attrs


def check_model(value: str, kind: str) -> None:
    propagation = kind == Job.Kind.PROPAGATE
    models = engine_client.propagation_models() if propagation else engine_client.available_models()
    what = "contour propagation method" if propagation else "delineation model"
    if value not in models:
        if not models:
            message = f"Unknown model {value!r}: no {what} is installed on this server."
        else:
            message = f"Unknown model {value!r}. Available {what}s: {', '.join(models)}."
        raise RequestRefused({"model": message})


def choose_series(attrs: dict) -> str:
    """The series key to use: the requested one if usable, or the only usable one."""
    scan: Scan = attrs["scan"]
    report = scan.preflight if isinstance(scan.preflight, dict) else None
    requested = attrs.get("series") or ""
    if not report or report.get("kind") != "dicom":
        return requested
    usable = usable_series(report)
    by_key = {s.get("key"): s for s in report.get("series", [])}
    if requested:
        if requested not in by_key:
            raise RequestRefused({"series": f"The scan has no image series {requested!r}."})
        if requested not in usable:
            raise RequestRefused(
                {"series": f"That series cannot be delineated: {by_key[requested].get('reason', 'refused')}"}
            )
    elif len(usable) == 1:
        requested = usable[0]
    elif len(usable) > 1:
        described = "; ".join(
            f"{k} ({by_key[k].get('modality')}, {by_key[k].get('images')} images"
            f"{', ' + by_key[k]['series_description'] if by_key[k].get('series_description') else ''})"
            for k in usable
        )
        raise RequestRefused({"series": f"This upload holds {len(usable)} image series; choose one: {described}."})
    return requested


def check_audit(scan: Scan, model: str) -> None:
    """An audit needs a DICOM scan with a structure set, and a model with a critic."""
    report = scan.preflight if isinstance(scan.preflight, dict) else None
    errors = {}
    if not scan.is_dicom or (report and report.get("kind") == "nifti"):
        errors["scan"] = (
            "A NIfTI scan cannot be audited: the audit needs the DICOM series the structure set (RTSTRUCT) "
            "was drawn on. Upload the DICOM CT together with its RTSTRUCT."
        )
    elif report and not structure_sets(report):
        errors["scan"] = (
            "This upload holds no structure set (RTSTRUCT) to audit. "
            "Upload the DICOM CT together with the RTSTRUCT drawn on it."
        )
    capable = engine_client.audit_models()
    if model not in capable:
        errors["model"] = f"Model {model!r} cannot audit contours: it has no contour-quality critic. " + (
            f"Models that can: {', '.join(capable)}." if capable else AUDIT_NEEDS_CRITIC
        )
    if errors:
        raise RequestRefused(errors)


def check_propagation(attrs: dict) -> None:
    """Both scans of one patient of the user, different, each with one image series; the
    contours an RTSTRUCT of the planning upload or a succeeded delineation of the planning scan."""
    daily: Scan = attrs["scan"]
    planning: Scan | None = attrs.get("planning_scan")
    errors: dict[str, str] = {}
    if planning is None:
        errors["planning_scan"] = "Choose the planning scan whose contours are to be propagated."
    elif planning.pk == daily.pk:
        errors["planning_scan"] = "The planning scan and the daily scan must be two different scans."
    elif daily.patient_id is None or planning.patient_id is None:
        which = "daily" if daily.patient_id is None else "planning"
        errors["planning_scan"] = (
            f"The {which} scan has no patient: enter its Patient ID on its scan page, so that both scans "
            "are known to be of the same patient."
        )
    elif daily.patient_id != planning.patient_id:
        errors["planning_scan"] = (
            "The planning scan and the daily scan belong to different patients; "
            "contours are propagated between scans of one patient only."
        )
    for role, scan in (("planning_scan", planning), ("scan", daily)):
        report = scan.preflight if scan is not None and isinstance(scan.preflight, dict) else None
        if role not in errors and report and len(usable_series(report)) > 1:
            errors[role] = (
                "This upload holds several image series; for a propagation upload the scan with one image series."
            )
    rtstruct, source = attrs.get("contours_rtstruct") or "", attrs.get("contours_job")
    if rtstruct and source is not None:
        errors["contours_rtstruct"] = "Give the planning contours once: an RTSTRUCT or a delineation job, not both."
    elif not rtstruct and source is None:
        errors["contours_rtstruct"] = (
            "Choose the planning contours: an RTSTRUCT of the planning upload (contours_rtstruct) or a finished "
            "delineation of the planning scan (contours_job)."
        )
    elif planning is not None and rtstruct:
        uids = [o.get("sop_instance_uid") for o in structure_sets(planning.preflight)]
        if rtstruct not in uids:
            errors["contours_rtstruct"] = "The planning upload holds no structure set (RTSTRUCT) with that UID." + (
                "" if uids else " It holds none at all: choose a delineation of the planning scan instead."
            )
    elif planning is not None and source is not None:
        if source.scan_id != planning.pk:
            errors["contours_job"] = "That delineation is of another scan, not of the planning scan."
        elif source.kind != Job.Kind.SEGMENT:
            errors["contours_job"] = "Choose a delineation job; its result holds the contours to propagate."
        elif source.status != Job.Status.SUCCEEDED:
            errors["contours_job"] = f"That delineation has no result (status: {source.status})."
    if errors:
        raise RequestRefused(errors)


# --- What an upload's pre-flight report offers --------------------------------------


def usable_series(report: dict | None) -> list[str]:
    """Keys of the series of a pre-flight report that can be delineated."""
    if not report:
        return []
    return [s["key"] for s in report.get("series", []) if s.get("status") == "ok" and s.get("key")]


def structure_sets(report: dict | None) -> list[dict]:
    """The RTSTRUCT objects a pre-flight report lists among the upload's other objects."""
    if not report:
        return []
    return [o for o in report.get("other_objects") or [] if isinstance(o, dict) and o.get("modality") == "RTSTRUCT"]


def dicom_patient_id(report: dict | None, patient_ids: dict[str, str]) -> str:
    """The Patient ID of an upload: that of the series ``segment`` would use, or the one
    Patient ID all usable series share; "" when there is none or they differ."""
    if not report:
        return ""
    selected = report.get("selected")
    if selected and patient_ids.get(selected):
        return patient_ids[selected]
    found = {patient_ids[key] for key in usable_series(report) if patient_ids.get(key)}
    return found.pop() if len(found) == 1 else ""
