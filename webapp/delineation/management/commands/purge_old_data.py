"""Delete scans older than the retention period, with their jobs and files.

Run it daily (cron or a systemd timer): ``python manage.py purge_old_data``. The period is
``DELINEO_RETENTION_DAYS`` unless ``--days`` is given; with neither, nothing is deleted.
Prints and logs counts only, never a scan's name.
"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from webapp.delineation import retention


class Command(BaseCommand):
    help = "Delete scans (with their jobs and files) older than DELINEO_RETENTION_DAYS or --days."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--days", type=int, help="Delete scans older than this many days (default: the setting).")
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; delete nothing.")

    def handle(self, *args, days: int | None, dry_run: bool, **options) -> None:
        if days is None:
            days = settings.DELINEO_RETENTION_DAYS
        if days is None:
            self.stdout.write("No retention period (DELINEO_RETENTION_DAYS unset and no --days): nothing deleted.")
            return
        if days < 0:
            raise CommandError(f"--days must be 0 or more, not {days}")
        result = retention.purge(days, dry_run=dry_run)
        verb = "would be deleted (dry run)" if dry_run else "deleted"
        self.stdout.write(
            f"{result.scans} scan(s) and {result.jobs} job(s) older than {days} day(s) {verb}; "
            f"{result.skipped} skipped because a job is running on them."
        )
