"""Sending a job's result to a DICOM peer (C-STORE SCU, or DICOMweb STOW-RS to the peer's
``stow_url``), one ``ResultSend`` per result.

A peer with ``send_results`` gets a ``ResultSend`` (queued) for each job its rule queued;
when the job succeeds the Celery task ``delineation.send_result`` sends the RTSTRUCT,
checked against the checksum recorded when the job finished. A refused association, a
peer that does not answer or a failure status is tried again after a wait that doubles
(``DICOM_SEND_RETRY_DELAY_S`` up to ``DICOM_SEND_MAX_DELAY_S``), at most
``DICOM_SEND_ATTEMPTS`` times; then the send is failed with the peer's status and message.
The result stays on the server either way: nothing is lost by a destination that is down.
"""

from __future__ import annotations

import logging

import pydicom
from django.conf import settings
from django.utils import timezone
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from webapp.delineation import engine_client, outputs
from webapp.delineation.dicom.models import DicomPeer, ResultSend
from webapp.delineation.dicom.tls import client_context
from webapp.delineation.engine_client import ResultFolder
from webapp.delineation.redact import traceback_without_messages

logger = logging.getLogger(__name__)

# C-STORE statuses that mean stored (PS3.4 B.2.3: success, and the warnings "coercion of
# data elements", "elements discarded", "data set does not match SOP class").
STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class SendFailed(Exception):
    """One attempt failed; ``status`` is the peer's C-STORE status, None when there was none."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def plan_sends(job, peer: DicomPeer) -> None:  # noqa: ANN001 (a Job)
    """Record what of ``job`` is sent once it succeeds, by the rule of ``peer`` (the sender):
    its RTSTRUCT, and its SEG with ``send_seg``, to ``results_to`` or else back to the peer."""
    if not peer.send_results:
        return
    destination = peer.results_to or peer
    for filename in (ResultFolder.RTSTRUCT, ResultFolder.SEG) if peer.send_seg else (ResultFolder.RTSTRUCT,):
        ResultSend.objects.get_or_create(
            job=job, peer=destination, filename=filename, defaults={"destination": destination.name}
        )


class SendRefused(Exception):
    """A "Send to" request that is not done: ``message`` for the user, ``status`` 400, 403 or 409."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def destinations_of(user) -> list[DicomPeer]:  # noqa: ANN001 (a user)
    """The destinations ``user`` may send results to: the DICOM peers they own."""
    return list(DicomPeer.objects.filter(owner=user)) if user is not None and user.is_authenticated else []


def send_on_request(  # noqa: ANN001 (a Job, a user)
    job, user, destination: str, acknowledged: bool = False
) -> tuple[ResultSend, bool]:
    """The "Send to" button and ``POST /api/jobs/{id}/send/``: send the RTSTRUCT of a
    finished job of ``user``'s, of its latest revision, to one of their destinations
    (``destinations_of``). Returns
    the send and whether it is new: the same request while one is queued returns that one.
    ``acknowledged``: the user ticked the warning of a job outside its model's domain.

    Raises:
        SendRefused: not the scan's owner (403), no result to send (409), a job outside its
            model's domain not acknowledged (409), unknown destination (400).
    """
    from webapp.delineation import sharing
    from webapp.delineation.tasks import submit_send

    try:
        sharing.check_owner(job.scan, user, "send the results of")
    except sharing.SharingRefused as exc:
        raise SendRefused(exc.message, exc.status) from None
    if job.status != job.Status.SUCCEEDED or ResultFolder.RTSTRUCT not in (job.checksums or {}):
        raise SendRefused("This job has no RTSTRUCT to send (it has not succeeded, or wrote none).", 409)
    if job.outside_domain and not acknowledged:
        raise SendRefused(f"{job.domain_warning}. To send its RTSTRUCT anyway, acknowledge this warning.", 409)
    peer = DicomPeer.objects.filter(owner=user, name=destination).first()
    if peer is None:
        names = ", ".join(p.name for p in destinations_of(user)) or "none; an administrator configures them"
        raise SendRefused(f"You have no destination named {destination!r}. Your destinations: {names}.", 400)
    filename = _latest_rtstruct(job)
    queued = ResultSend.objects.filter(job=job, peer=peer, filename=filename, state=ResultSend.State.QUEUED).first()
    if queued is not None:
        return queued, False
    record = ResultSend.objects.create(job=job, peer=peer, destination=peer.name, filename=filename)
    submit_send(record.pk)
    return record, True


def _latest_rtstruct(job) -> str:  # noqa: ANN001 (a Job)
    """The RTSTRUCT of the job's latest revision (the corrected, approved contours when there
    are some; the model's own otherwise); the send writes it first if it is not yet."""
    from webapp.delineation import revisions

    return revisions.export_name(job, revisions.latest(job), ResultFolder.RTSTRUCT)[0]


def _written(send: ResultSend) -> None:
    """Write the revision's RTSTRUCT a send is of, if it is not yet (in the worker: it needs
    the engine, ``exports.build``).

    Raises:
        SendFailed: it cannot be written.
    """
    from webapp.delineation import exports

    if send.filename in _checksums_of(send) or send.filename == ResultFolder.RTSTRUCT:
        return
    try:
        exports.build(send.job, send.filename)
    except engine_client.DelineationError as exc:
        number = send.filename.split("/")[1]
        raise SendFailed(f"The RTSTRUCT of revision {number} could not be written: {exc.message}") from None


def _checksums_of(send: ResultSend) -> dict[str, str]:
    """The checksums a sent file is verified with: its revision's, or the job's own outputs'."""
    parts = send.filename.split("/")
    if parts[0] == "revisions" and len(parts) == 3 and parts[1].isdigit():
        revision = send.job.revisions.filter(number=int(parts[1])).first()
        return revision.checksums if revision is not None else {}
    return send.job.checksums


def job_finished(job) -> None:  # noqa: ANN001 (a Job)
    """Queue the planned sends of a succeeded job; fail those of a failed one, and hold back
    (as failed, with the reason) those of a job outside its model's domain: a planning system
    would import its contours like any others, so a physician reviews it and uses Send to."""
    from webapp.delineation.tasks import submit_send

    if job.outside_domain:
        ResultSend.objects.filter(job=job, state=ResultSend.State.QUEUED).update(
            state=ResultSend.State.FAILED,
            message=f"Not sent: {job.domain_warning}. Review it, then use Send to.",
            finished=timezone.now(),
        )
    elif job.status == job.Status.SUCCEEDED:
        for send_id in ResultSend.objects.filter(job=job, state=ResultSend.State.QUEUED).values_list("pk", flat=True):
            submit_send(send_id)
    else:
        ResultSend.objects.filter(job=job, state=ResultSend.State.QUEUED).update(
            state=ResultSend.State.FAILED,
            message="The job failed: there is no result to send.",
            finished=timezone.now(),
        )


def retry_delay(attempts: int) -> int:
    """Seconds before attempt ``attempts + 1``: doubling from DICOM_SEND_RETRY_DELAY_S."""
    return min(settings.DICOM_SEND_RETRY_DELAY_S * 2 ** max(attempts - 1, 0), settings.DICOM_SEND_MAX_DELAY_S)


def attempt(send_id: int) -> int | None:
    """Make one attempt at a queued send. Returns the seconds to wait before the next, or
    None when there is nothing more to do (sent, failed for good, or not queued)."""
    send = ResultSend.objects.select_related("job", "peer").filter(pk=send_id, state=ResultSend.State.QUEUED).first()
    if send is None or send.job.status != send.job.Status.SUCCEEDED:
        return None
    if send.peer is None:
        _finish(send, ResultSend.State.FAILED, "The destination was removed before the result could be sent.")
        return None
    try:
        _written(send)
        dataset = _result(send)
    except SendFailed as exc:
        _finish(send, ResultSend.State.FAILED, exc.message)
        return None
    send.attempts += 1
    try:
        status = stow(send.peer, dataset) if send.peer.stow_url else c_store(send.peer, dataset)
    except Exception as exc:  # SendFailed, or a bug: either way an attempt that failed, never a send left queued
        if not isinstance(exc, SendFailed):
            logger.error("sending job %s's result failed:\n%s", send.job_id, traceback_without_messages(exc))
            exc = SendFailed(f"Internal error while sending ({type(exc).__name__}).")
        logger.warning(
            "sending job %s's result to %s failed (attempt %d)", send.job_id, send.destination, send.attempts
        )
        send.status, send.message = exc.status, exc.message
        if send.attempts >= settings.DICOM_SEND_ATTEMPTS:
            _finish(send, ResultSend.State.FAILED, f"{exc.message} (after {send.attempts} attempts)", exc.status)
            return None
        send.save(update_fields=["attempts", "status", "message"])
        return retry_delay(send.attempts)
    _finish(send, ResultSend.State.SENT, "", status)
    logger.info("job %s's %s sent to %s", send.job_id, send.filename, send.destination)
    return None


def _finish(send: ResultSend, state: str, message: str, status: int | None = None) -> None:
    send.state, send.message, send.finished = state, message, timezone.now()
    if status is not None:
        send.status = status
    send.save(update_fields=["state", "message", "status", "attempts", "finished"])


def _result(send: ResultSend) -> pydicom.Dataset:
    job = send.job
    if job.result_path is None:
        raise SendFailed("The job has no result folder.")
    try:
        with outputs.open_verified(job.result_path, send.filename, _checksums_of(send)) as handle:
            dataset = pydicom.dcmread(handle)
        if not dataset.get("SOPClassUID") or not dataset.get("SOPInstanceUID"):
            raise InvalidDicomError("no SOP Class or SOP Instance UID")
        return dataset
    except FileNotFoundError:
        raise SendFailed(f"The job wrote no {send.filename}, so there is nothing to send.") from None
    except outputs.DamagedOutput:
        raise SendFailed(
            f"The stored {send.filename} no longer matches the file the job wrote; it was not sent."
        ) from None
    except InvalidDicomError:
        raise SendFailed(f"The stored {send.filename} is not a DICOM file; it was not sent.") from None


def c_store(peer: DicomPeer, dataset: pydicom.Dataset) -> int:
    """Send ``dataset`` to ``peer`` in one association; returns the peer's status (stored).

    Raises:
        SendFailed: no association, no answer, or a failure status.
    """
    ae = AE(ae_title=settings.DICOM_NODE_AE_TITLE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = settings.DICOM_NETWORK_TIMEOUT_S
    syntax = dataset.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)
    syntaxes = list(dict.fromkeys([syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    ae.add_requested_context(dataset.SOPClassUID, syntaxes)
    where = f"{peer.ae_title} at {peer.host}:{peer.port}{' (TLS)' if peer.tls else ''}"
    tls_args = (client_context(), peer.host) if peer.tls else None
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args)
    if assoc.is_rejected:
        raise SendFailed(f"{where} rejected the association (is the node's AE title {ae.ae_title} known there?)")
    if not assoc.is_established:
        raise SendFailed(f"No association with {where}: it did not answer, or refused the connection.")
    try:
        response = assoc.send_c_store(dataset)
    finally:
        if assoc.is_established:
            assoc.release()
    if "Status" not in response:
        raise SendFailed(f"{where} did not answer the C-STORE (timeout or aborted association).")
    status = int(response.Status)
    if status not in STORED:
        comment = str(response.get("ErrorComment", "") or "")
        detail = f": {comment}" if comment else ""
        raise SendFailed(f"{where} refused the object with status 0x{status:04X}{detail}", status)
    return status


def stow(peer: DicomPeer, dataset: pydicom.Dataset) -> int:
    """Send ``dataset`` by DICOMweb STOW-RS to ``peer.stow_url`` (dicomweb-client); returns 0 (stored).

    Raises:
        SendFailed: the server cannot be reached, answers an HTTP error, or lists the
            object as failed (``status``: its Failure Reason, a C-STORE status).
    """
    import requests
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=peer.stow_url, timeout=settings.DICOM_NETWORK_TIMEOUT_S)
    client.set_http_retry_params(retry=False)  # the task retries, with its back-off and a record of each attempt
    try:
        response = client.store_instances([dataset])
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else "?"
        raise SendFailed(
            f"The DICOMweb server at {peer.stow_url} answered HTTP {code} to the STOW-RS request."
        ) from None
    except requests.RequestException as exc:
        raise SendFailed(f"No answer from the DICOMweb server at {peer.stow_url} ({type(exc).__name__}).") from None
    failed = response.get("FailedSOPSequence") if response is not None else None
    if failed:
        reason = failed[0].get("FailureReason")
        raise SendFailed(
            f"The DICOMweb server at {peer.stow_url} did not store the object"
            + (f" (failure reason 0x{int(reason):04X})" if reason is not None else ""),
            int(reason) if reason is not None else None,
        )
    return 0
