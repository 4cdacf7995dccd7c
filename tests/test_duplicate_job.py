"""The same job sent twice (a double click, a retried POST) gives one job: the API answers
the second request with 200 and the first job, the scan page queues nothing new. Concurrent
requests are decided by the database (tests/integration/test_faults.py races them on
PostgreSQL)."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from webapp.delineation import engine_client, tasks
from webapp.delineation.models import AccessEvent, Job

pytestmark = pytest.mark.django_db


def post(client, scan_id, model="hn-oar"):
    return client.post("/api/jobs/", {"scan": scan_id, "model": model}, format="json")


def test_the_same_request_while_queued_returns_the_first_job(alice_api, alice_scan, fake_engine):
    first = post(alice_api, alice_scan["id"])
    again = post(alice_api, alice_scan["id"])
    assert first.status_code == 201 and again.status_code == 200, again.content
    assert again.json()["id"] == first.json()["id"] and again.json()["status"] == "queued"
    assert Job.objects.count() == 1
    assert AccessEvent.objects.filter(action="queue").count() == 1  # one job queued, once


def test_the_same_request_while_running_returns_it_too(alice_api, alice_scan, fake_engine):
    first = post(alice_api, alice_scan["id"]).json()
    Job.objects.filter(pk=first["id"]).update(status=Job.Status.RUNNING)
    again = post(alice_api, alice_scan["id"])
    assert again.status_code == 200 and again.json()["id"] == first["id"]


def test_nothing_is_sent_to_the_queue_for_the_second_request(
    alice_api, alice_scan, fake_engine, django_capture_on_commit_callbacks
):
    post(alice_api, alice_scan["id"])
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert post(alice_api, alice_scan["id"]).status_code == 200
    assert callbacks == []


@pytest.mark.parametrize("status", [Job.Status.SUCCEEDED, Job.Status.FAILED])
def test_after_the_job_finished_the_same_request_queues_a_new_one(alice_api, alice_scan, fake_engine, status):
    first = post(alice_api, alice_scan["id"]).json()
    Job.objects.filter(pk=first["id"]).update(status=status)
    again = post(alice_api, alice_scan["id"])
    assert again.status_code == 201 and again.json()["id"] != first["id"]


def test_another_model_or_kind_is_another_job(alice_api, alice_scan, fake_engine, monkeypatch):
    monkeypatch.setattr(engine_client, "available_models", lambda: ["hn-oar", "hn-rt"])
    assert post(alice_api, alice_scan["id"], "hn-oar").status_code == 201
    assert post(alice_api, alice_scan["id"], "hn-rt").status_code == 201
    assert Job.objects.count() == 2


def test_the_database_refuses_a_second_unfinished_copy(alice, alice_scan):
    """What decides between two requests that both found no job: the partial unique index."""
    Job.objects.create(owner=alice, scan_id=alice_scan["id"], model_name="hn-oar")
    with pytest.raises(IntegrityError), transaction.atomic():
        Job.objects.create(owner=alice, scan_id=alice_scan["id"], model_name="hn-oar", status=Job.Status.RUNNING)
    Job.objects.create(owner=alice, scan_id=alice_scan["id"], model_name="hn-oar", status=Job.Status.FAILED)


def test_queue_job_returns_the_unfinished_one_when_its_insert_is_refused(alice, alice_scan):
    scan = Job.objects.create(owner=alice, scan_id=alice_scan["id"], model_name="hn-oar").scan
    job, created = tasks.queue_job(alice, scan, "hn-oar")
    assert not created and Job.objects.count() == 1 and job.scan_id == scan.id


def test_a_double_click_on_the_scan_page_queues_one_job(client, alice, alice_scan, fake_engine):
    client.force_login(alice)
    pages = [client.post(f"/scans/{alice_scan['id']}/", {"model": "hn-oar", "kind": "segment"}) for _ in range(2)]
    assert [page.status_code for page in pages] == [302, 302]
    (job,) = Job.objects.all()
    assert pages[1]["Location"].endswith(f"?new={job.id}")
    shown = client.get(pages[1]["Location"]).content.decode()
    assert "is already queued; it was not queued again" in shown
