"""At most DELINEO_UPLOAD_CHECKS_AT_ONCE uploads are stored and checked at once in a web
process (a check may read a whole volume into memory): another waits for a slot, and is
answered 503 with a message, keeping nothing, when none frees within DELINEO_UPLOAD_CHECK_WAIT."""

from __future__ import annotations

import threading

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests import factories
from webapp.delineation import uploads
from webapp.delineation.models import Scan

pytestmark = pytest.mark.django_db


def nifti():
    return SimpleUploadedFile("ct.nii.gz", factories.nifti_bytes())


def test_an_upload_waits_for_a_slot_then_is_refused_with_503(alice_api, media_root, settings):
    settings.DELINEO_UPLOAD_CHECKS_AT_ONCE, settings.DELINEO_UPLOAD_CHECK_WAIT = 2, 0
    with uploads._checking_slot(), uploads._checking_slot():  # two uploads being checked
        response = alice_api.post("/api/scans/", {"file": nifti()}, format="multipart")
    assert response.status_code == 503, response.content
    assert "busy checking other uploads" in response.json()["detail"]
    assert Scan.objects.count() == 0 and [p for p in media_root.rglob("*") if p.is_file()] == []
    response = alice_api.post("/api/scans/", {"file": nifti()}, format="multipart")  # the slots are free again
    assert response.status_code == 201, response.content


def test_an_upload_gets_a_slot_freed_while_it_waits(alice_api, settings):
    settings.DELINEO_UPLOAD_CHECKS_AT_ONCE, settings.DELINEO_UPLOAD_CHECK_WAIT = 1, 30
    held = threading.Event()
    release = threading.Event()

    def other_upload() -> None:
        with uploads._checking_slot():
            held.set()
            release.wait(10)

    other = threading.Thread(target=other_upload)
    other.start()
    assert held.wait(10)
    threading.Timer(0.5, release.set).start()
    response = alice_api.post("/api/scans/", {"file": nifti()}, format="multipart")
    other.join()
    assert response.status_code == 201, response.content
