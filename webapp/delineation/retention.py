"""Retention: delete scans older than a number of days, with their jobs and files; and,
on a period of its own, old events of the access log."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from webapp.delineation import access_log
from webapp.delineation.models import AccessEvent, Job, Scan

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PurgeResult:
    scans: int  # deleted (or, in a dry run, that would be)
    jobs: int  # their jobs
    skipped: int  # old scans left for now: a job is running on them
    receipts: int = 0  # studies from DICOM peers that never became a scan (refused, or never completed)


def purge(days: int, dry_run: bool = False, now: datetime | None = None) -> PurgeResult:
    """Delete every scan uploaded more than ``days`` days before ``now``, its jobs and its folder
    (``MEDIA_ROOT/scans/<scan>/``, removed once committed by the signal in models.py), recording a
    delete event for each. Queued jobs go with their scan: their task finds no job and does nothing.
    A scan with a running job is skipped (the next purge takes it). Logs counts only, never names."""
    if days < 0:
        raise ValueError(f"days must be 0 or more, not {days}")
    cutoff = (now or timezone.now()) - timedelta(days=days)
    scans = jobs = skipped = 0
    for scan_id in Scan.objects.filter(created__lt=cutoff).values_list("id", flat=True):
        with transaction.atomic():
            scan = Scan.objects.filter(pk=scan_id).first()
            if scan is None:  # deleted meanwhile
                continue
            # Locked, so that no worker starts one of its queued jobs between the check and the delete;
            # a propagation reads its planning scan too.
            statuses = list(
                Job.objects.select_for_update()
                .filter(Q(scan=scan) | Q(planning_scan=scan))
                .values_list("scan_id", "status")
            )
            if any(status == Job.Status.RUNNING for _, status in statuses):
                skipped += 1
                continue
            scans, jobs = scans + 1, jobs + sum(1 for scan_of_job, _ in statuses if scan_of_job == scan.pk)
            if not dry_run:
                access_log.record(None, AccessEvent.Action.DELETE, scan)
                scan.delete()
    receipts = _purge_receipts(cutoff, dry_run)
    logger.info(
        "retention %s: %d scan(s) and %d job(s) older than %d day(s) %s; %d skipped (a job is running); "
        "%d DICOM receipt(s) without a scan",
        "dry run" if dry_run else "purge",
        scans,
        jobs,
        days,
        "would be deleted" if dry_run else "deleted",
        skipped,
        receipts,
    )
    return PurgeResult(scans=scans, jobs=jobs, skipped=skipped, receipts=receipts)


def _purge_receipts(cutoff: datetime, dry_run: bool) -> int:
    """Studies received by the DICOM node that never became a scan (its check failed, or the
    sender never completed it), with nothing received since ``cutoff``: their files are patient
    data too (removed with the row, models.DicomReceipt). A study being checked is left alone."""
    from webapp.delineation.dicom.models import DicomReceipt

    old = DicomReceipt.objects.filter(scan__isnull=True, created__lt=cutoff).exclude(state="ingesting")
    old = old.filter(Q(last_received__isnull=True) | Q(last_received__lt=cutoff))
    if dry_run:
        return old.count()
    count = 0
    for receipt in old:
        with transaction.atomic():
            receipt.delete()
        count += 1
    return count


def purge_access_log(days: int, dry_run: bool = False, now: datetime | None = None) -> int:
    """Delete every access-log event recorded more than ``days`` days before ``now``, and record
    the purge itself (with the count) in the same transaction, so that the log never loses
    events without saying so. Earlier purge records are kept: they are what accounts for the
    events that are gone. Nothing is recorded when nothing was deleted. Returns the number
    of events deleted (in a dry run, that would be). Logs the count only."""
    if days < 0:
        raise ValueError(f"days must be 0 or more, not {days}")
    cutoff = (now or timezone.now()) - timedelta(days=days)
    old = AccessEvent.objects.filter(created__lt=cutoff).exclude(action=AccessEvent.Action.PURGE)
    if dry_run:
        count = old.count()
    else:
        with transaction.atomic():
            count = old.delete()[0]  # nothing cascades from an event: every row deleted is one
            if count:
                access_log.record_purge(count)
    logger.info(
        "retention %s: %d access-log event(s) older than %d day(s) %s",
        "dry run" if dry_run else "purge",
        count,
        days,
        "would be deleted" if dry_run else "deleted",
    )
    return count
