"""Retention: ``manage.py purge_old_data`` deletes old scans with their jobs and folders,
keeps recent ones, records a delete event per scan, and a job queued on a deleted scan
does nothing when its task runs. On a period of its own it deletes old access-log events,
recording each purge with its count."""

from __future__ import annotations

import logging
from datetime import timedelta
from io import StringIO

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.utils import timezone

from tests import factories
from webapp.delineation import runner, tasks
from webapp.delineation.models import AccessEvent, Job, Scan

pytestmark = pytest.mark.django_db


def _upload(api, name: str) -> Scan:
    upload = SimpleUploadedFile("ct.nii.gz", factories.nifti_bytes(), content_type="application/gzip")
    response = api.post("/api/scans/", {"file": upload, "name": name}, format="multipart")
    assert response.status_code == 201, response.content
    return Scan.objects.get(pk=response.json()["id"])


@pytest.fixture
def old_and_new(alice_api, alice_job, media_root):
    """Alice's scan with a succeeded job, 40 days old, and a scan uploaded now."""
    old = Scan.objects.get(pk=alice_job["scan"])
    Scan.objects.filter(pk=old.pk).update(created=timezone.now() - timedelta(days=40))
    new = _upload(alice_api, "Doe^John")
    assert old.directory.is_dir() and new.directory.is_dir()
    return old, new


def _purge(*args: str) -> str:
    out = StringIO()
    call_command("purge_old_data", *args, stdout=out)
    return out.getvalue()


def test_purge_deletes_old_scans_rows_and_folders_keeps_recent(
    old_and_new, alice_job, django_capture_on_commit_callbacks
):
    old, new = old_and_new
    with django_capture_on_commit_callbacks(execute=True):
        out = _purge("--days", "30")
    assert "1 scan(s) and 1 job(s) older than 30 day(s) deleted" in out
    assert "Doe" not in out
    assert list(Scan.objects.values_list("pk", flat=True)) == [new.pk]
    assert not Job.objects.filter(pk=alice_job["id"]).exists()
    assert not old.directory.exists()
    assert new.directory.is_dir() and any(new.original_dir.iterdir())
    (event,) = AccessEvent.objects.filter(action="delete")
    assert (event.object_type, event.object_id, event.user, event.username) == ("scan", old.pk, None, "")


def test_dry_run_deletes_nothing(old_and_new, django_capture_on_commit_callbacks):
    old, new = old_and_new
    with django_capture_on_commit_callbacks(execute=True):
        out = _purge("--days", "30", "--dry-run")
    assert "1 scan(s) and 1 job(s) older than 30 day(s) would be deleted (dry run)" in out
    assert Scan.objects.count() == 2 and Job.objects.count() == 1
    assert old.directory.is_dir() and new.directory.is_dir()
    assert not AccessEvent.objects.filter(action="delete").exists()


def test_setting_is_the_default_period(settings, old_and_new, django_capture_on_commit_callbacks):
    settings.DELINEO_RETENTION_DAYS = 50
    with django_capture_on_commit_callbacks(execute=True):
        assert "0 scan(s)" in _purge()
    settings.DELINEO_RETENTION_DAYS = 30
    with django_capture_on_commit_callbacks(execute=True):
        assert "1 scan(s)" in _purge()
    assert Scan.objects.count() == 1


def test_without_a_period_nothing_is_deleted(settings, old_and_new):
    settings.DELINEO_RETENTION_DAYS = None
    assert "no scan deleted" in _purge()
    assert Scan.objects.count() == 2


def test_negative_days_refused(old_and_new):
    with pytest.raises(CommandError, match="0 or more"):
        _purge("--days", "-1")


def test_scan_with_a_running_job_is_skipped(old_and_new, alice_job, django_capture_on_commit_callbacks):
    old, _ = old_and_new
    Job.objects.filter(pk=alice_job["id"]).update(status="running")
    with django_capture_on_commit_callbacks(execute=True):
        out = _purge("--days", "30")
    assert "0 scan(s)" in out and "1 skipped" in out
    assert old.directory.is_dir() and Scan.objects.filter(pk=old.pk).exists()


def test_queued_job_of_a_purged_scan_is_a_no_op(
    alice, old_and_new, fake_engine, media_root, django_capture_on_commit_callbacks
):
    old, _ = old_and_new
    engine_runs = len(fake_engine)  # alice_job's
    with django_capture_on_commit_callbacks(execute=False) as sent:  # queued, its task not run yet
        job, _ = tasks.queue_job(alice, old, "hn-oar")
    assert len(sent) == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert "1 scan(s) and 2 job(s)" in _purge("--days", "30")
    assert runner.execute_job(job.id) == "missing"
    sent[0]()  # the task as the broker would deliver it
    assert len(fake_engine) == engine_runs  # the engine never ran
    assert not old.directory.exists() and not Job.objects.filter(pk=job.pk).exists()


def test_api_delete_takes_queued_jobs_and_their_task_does_nothing(
    alice, alice_api, alice_scan, fake_engine, media_root, django_capture_on_commit_callbacks
):
    scan = Scan.objects.get(pk=alice_scan["id"])
    with django_capture_on_commit_callbacks(execute=False) as sent:
        job, _ = tasks.queue_job(alice, scan, "hn-oar")
    with django_capture_on_commit_callbacks(execute=True):
        assert alice_api.delete(f"/api/scans/{scan.pk}/").status_code == 204
    sent[0]()
    assert not fake_engine and not Job.objects.filter(pk=job.pk).exists()
    assert not scan.directory.exists()


# --- The access log -----------------------------------------------------------------------


def _age(days: int, **lookup) -> int:
    """Make the events matching ``lookup`` ``days`` days old; returns how many."""
    return AccessEvent.objects.filter(**lookup).update(created=timezone.now() - timedelta(days=days))


@pytest.fixture
def old_events(settings, old_and_new) -> Scan:
    """The upload of Alice's old scan and the queueing of its job, 400 days ago; the upload of
    her new scan (returned), now. Neither period is set: each test gives its own."""
    old, new = old_and_new
    settings.DELINEO_RETENTION_DAYS = settings.DELINEO_AUDIT_RETENTION_DAYS = None
    assert _age(400, object_id__in=[old.pk, *Job.objects.filter(scan=old).values_list("pk", flat=True)]) == 2
    assert AccessEvent.objects.count() == 3
    return new


def test_audit_purge_deletes_old_events_keeps_recent_and_records_itself(old_events, caplog):
    caplog.set_level(logging.INFO)
    out = _purge("--audit-days", "365")
    assert "2 access-log event(s) older than 365 day(s) deleted." in out
    assert "no scan deleted" in out and Scan.objects.count() == 2
    assert [(e.action, e.object_id) for e in AccessEvent.objects.exclude(action="purge")] == [("upload", old_events.pk)]
    (purge,) = AccessEvent.objects.filter(action="purge")
    assert (purge.object_type, purge.object_id, purge.count) == ("log", None, 2)
    assert (purge.user, purge.username, purge.object_owner, purge.filename, purge.team, purge.client_ip) == (
        None,
        "",
        None,
        "",
        "",
        None,
    )
    assert "2 access-log event(s) older than 365 day(s) deleted" in caplog.text  # counts only
    assert "Doe" not in out + caplog.text


def test_audit_purge_record_is_read_by_staff_not_by_owners(old_events, alice_api, bob, bob_api):
    _purge("--audit-days", "365")
    bob.is_staff = True
    bob.save()
    (purge,) = [e for e in bob_api.get("/api/access-log/").json() if e["action"] == "purge"]
    assert (purge["username"], purge["object_type"], purge["object_id"], purge["count"]) == ("", "log", None, 2)
    assert [e["action"] for e in alice_api.get("/api/access-log/").json()] == ["upload"]


def test_audit_setting_is_the_default_period(settings, old_events):
    settings.DELINEO_AUDIT_RETENTION_DAYS = 500
    assert "0 access-log event(s) older than 500 day(s) deleted." in _purge()
    assert AccessEvent.objects.count() == 3  # nothing deleted, nothing recorded
    settings.DELINEO_AUDIT_RETENTION_DAYS = 365
    assert "2 access-log event(s) older than 365 day(s) deleted." in _purge()
    assert sorted(AccessEvent.objects.values_list("action", flat=True)) == ["purge", "upload"]


def test_without_an_audit_period_every_event_is_kept_while_scans_are_purged(
    settings, old_and_new, django_capture_on_commit_callbacks
):
    settings.DELINEO_RETENTION_DAYS, settings.DELINEO_AUDIT_RETENTION_DAYS = 30, None
    assert _age(4000) == 3
    with django_capture_on_commit_callbacks(execute=True):
        out = _purge()
    assert "1 scan(s) and 1 job(s) older than 30 day(s) deleted" in out
    assert "DELINEO_AUDIT_RETENTION_DAYS unset and no --audit-days): no event deleted." in out
    assert sorted(AccessEvent.objects.values_list("action", flat=True)) == ["delete", "queue", "upload", "upload"]


def test_audit_dry_run_deletes_nothing(old_events):
    out = _purge("--audit-days", "365", "--dry-run")
    assert "2 access-log event(s) older than 365 day(s) would be deleted (dry run)." in out
    assert AccessEvent.objects.count() == 3 and not AccessEvent.objects.filter(action="purge").exists()


@pytest.mark.parametrize("args", [("--audit-days", "-1"), ("--days", "30", "--audit-days", "-1")])
def test_negative_audit_days_refused_before_anything_is_deleted(old_events, args):
    with pytest.raises(CommandError, match="--audit-days must be 0 or more, not -1"):
        _purge(*args)
    assert Scan.objects.count() == 2 and AccessEvent.objects.count() == 3


def test_earlier_purge_records_are_kept(old_events):
    _purge("--audit-days", "365")
    assert _age(400, action__in=["purge", "upload"]) == 2
    assert "1 access-log event(s) older than 365 day(s) deleted." in _purge("--audit-days", "365")
    assert sorted(AccessEvent.objects.values_list("action", "count")) == [("purge", 1), ("purge", 2)]
