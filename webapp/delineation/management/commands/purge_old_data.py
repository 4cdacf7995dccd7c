"""Delete scans older than the retention period, with their jobs and files, and access-log
events older than the access log's own period.

Run it daily (cron or a systemd timer): ``python manage.py purge_old_data``. Scans: the period
is ``DELINEO_RETENTION_DAYS`` unless ``--days`` is given. Access log: ``DELINEO_AUDIT_RETENTION_DAYS``
unless ``--audit-days`` is given. Where neither gives a period, nothing of that kind is deleted.
Prints and logs counts only, never a scan's name.
"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from webapp.delineation import retention


class Command(BaseCommand):
    help = (
        "Delete scans (with their jobs and files) older than DELINEO_RETENTION_DAYS or --days, and "
        "access-log events older than DELINEO_AUDIT_RETENTION_DAYS or --audit-days."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--days", type=int, help="Delete scans older than this many days (default: the setting).")
        parser.add_argument(
            "--audit-days",
            type=int,
            help="Delete access-log events older than this many days (default: DELINEO_AUDIT_RETENTION_DAYS).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; delete nothing.")

    def handle(self, *args, days: int | None, audit_days: int | None, dry_run: bool, **options) -> None:
        if days is None:
            days = settings.DELINEO_RETENTION_DAYS
        if audit_days is None:
            audit_days = settings.DELINEO_AUDIT_RETENTION_DAYS
        # Both checked before anything is deleted.
        for option, value in (("--days", days), ("--audit-days", audit_days)):
            if value is not None and value < 0:
                raise CommandError(f"{option} must be 0 or more, not {value}")
        verb = "would be deleted (dry run)" if dry_run else "deleted"
        if days is None:
            self.stdout.write(
                "No retention period for scans (DELINEO_RETENTION_DAYS unset and no --days): no scan deleted."
            )
        else:
            result = retention.purge(days, dry_run=dry_run)
            self.stdout.write(
                f"{result.scans} scan(s) and {result.jobs} job(s) older than {days} day(s) {verb}; "
                f"{result.skipped} skipped because a job is running on them."
                + (f" {result.receipts} DICOM receipt(s) that never became a scan {verb}." if result.receipts else "")
            )
        if audit_days is None:
            self.stdout.write(
                "No retention period for the access log (DELINEO_AUDIT_RETENTION_DAYS unset and no --audit-days): "
                "no event deleted."
            )
        else:
            count = retention.purge_access_log(audit_days, dry_run=dry_run)
            self.stdout.write(f"{count} access-log event(s) older than {audit_days} day(s) {verb}.")
