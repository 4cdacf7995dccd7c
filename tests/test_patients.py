"""Scans grouped by patient: the DICOM Patient ID, or one entered (NIfTI); each user sees
only their own patients. Personas: Alice owns the data, Charlie must get 404."""

from __future__ import annotations

import json
import logging

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests import factories
from webapp.delineation.models import AccessEvent, Patient, Scan

pytestmark = pytest.mark.django_db


def upload(client, data: bytes, filename: str, **fields):
    file = SimpleUploadedFile(filename, data)
    return client.post("/api/scans/", {"file": file, **fields}, format="multipart")


def test_a_dicom_upload_is_grouped_by_its_patient_id(alice_api, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    first = upload(alice_api, factories.dicom_zip_bytes(tmp_path / "a"), "planning.zip")
    second = upload(alice_api, factories.dicom_zip_bytes(tmp_path / "b"), "daily.zip")
    assert first.status_code == second.status_code == 201
    patient = Patient.objects.get()
    assert patient.patient_id == "PHANTOM1"
    assert first.json()["patient"] == {"id": str(patient.id), "patient_id": "PHANTOM1", "label": ""}
    assert second.json()["patient"]["id"] == str(patient.id)
    # The Patient ID lives in the patient only: not in the stored pre-flight report, never in the log.
    for scan in Scan.objects.all():
        assert "patient_ids" not in scan.preflight and "PHANTOM1" not in json.dumps(scan.preflight)
    assert "PHANTOM1" not in caplog.text
    (listed,) = alice_api.get("/api/patients/").json()
    assert listed["patient_id"] == "PHANTOM1"
    assert {s["id"] for s in listed["scans"]} == {first.json()["id"], second.json()["id"]}


def test_another_patient_id_is_another_patient(alice_api, tmp_path):
    upload(alice_api, factories.dicom_zip_bytes(tmp_path / "a"), "a.zip")
    upload(alice_api, factories.dicom_zip_bytes(tmp_path / "b", patient_id="PHANTOM2"), "b.zip")
    assert sorted(p["patient_id"] for p in alice_api.get("/api/patients/").json()) == ["PHANTOM1", "PHANTOM2"]


def test_a_nifti_scan_takes_the_patient_id_entered(alice_api):
    response = upload(alice_api, factories.nifti_bytes(), "ct.nii.gz", patient_id="  NIFTI-7 ", patient_label="Case 7")
    assert response.status_code == 201, response.content
    assert response.json()["patient"]["patient_id"] == "NIFTI-7"
    assert Patient.objects.get().label == "Case 7"


def test_a_nifti_scan_without_an_id_has_no_patient(alice_api):
    response = upload(alice_api, factories.nifti_bytes(), "ct.nii.gz")
    assert response.status_code == 201 and response.json()["patient"] is None
    assert Patient.objects.count() == 0


def test_an_entered_id_overrides_the_dicom_one(alice_api, tmp_path):
    response = upload(alice_api, factories.dicom_zip_bytes(tmp_path / "a"), "a.zip", patient_id="MRN-12")
    assert response.json()["patient"]["patient_id"] == "MRN-12"
    assert list(Patient.objects.values_list("patient_id", flat=True)) == ["MRN-12"]


@pytest.mark.parametrize(
    "patient_id,message",
    [("A" * 65, "at most 64 characters"), ("AB\\CD", "backslash"), ("AB\nCD", "control character")],
)
def test_an_unusable_patient_id_refuses_the_upload(alice_api, media_root, patient_id, message):
    response = upload(alice_api, factories.nifti_bytes(), "ct.nii.gz", patient_id=patient_id)
    assert response.status_code == 400 and message in response.json()["detail"]
    assert Scan.objects.count() == 0
    assert not (media_root / "scans").exists()  # refused before anything was stored


def test_the_patient_of_a_scan_can_be_set_and_removed(alice_api, alice_scan):
    response = alice_api.patch(
        f"/api/scans/{alice_scan['id']}/", {"patient_id": "P-1", "patient_label": "Mr X"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["patient"]["patient_id"] == "P-1" and response.json()["patient"]["label"] == "Mr X"
    response = alice_api.patch(f"/api/scans/{alice_scan['id']}/", {"patient_id": ""}, format="json")
    assert response.status_code == 200 and response.json()["patient"] is None
    response = alice_api.patch(f"/api/scans/{alice_scan['id']}/", {"patient_id": "X\\Y"}, format="json")
    assert response.status_code == 400 and "backslash" in response.json()["patient_id"][0]


def test_the_label_of_a_patient_can_be_changed(alice_api, alice_dicom_scan):
    patient_id = alice_dicom_scan["patient"]["id"]
    response = alice_api.patch(f"/api/patients/{patient_id}/", {"label": "Head and neck, case 3"}, format="json")
    assert response.status_code == 200 and response.json()["label"] == "Head and neck, case 3"
    assert response.json()["patient_id"] == "PHANTOM1"


def test_charlie_sees_none_of_alices_patients(alice_api, charlie_api, alice_dicom_scan, tmp_path):
    patient_id = alice_dicom_scan["patient"]["id"]
    assert charlie_api.get("/api/patients/").json() == []
    for response in (
        charlie_api.get(f"/api/patients/{patient_id}/"),
        charlie_api.patch(f"/api/patients/{patient_id}/", {"label": "mine"}, format="json"),
        charlie_api.patch(f"/api/scans/{alice_dicom_scan['id']}/", {"patient_id": "C-1"}, format="json"),
    ):
        assert response.status_code == 404
        assert "PHANTOM1" not in response.content.decode()
    # The same Patient ID uploaded by Charlie is Charlie's own patient.
    upload(charlie_api, factories.dicom_zip_bytes(tmp_path / "c"), "c.zip")
    (charlies,) = charlie_api.get("/api/patients/").json()
    assert charlies["id"] != patient_id and len(charlies["scans"]) == 1
    assert [p["id"] for p in alice_api.get("/api/patients/").json()] == [patient_id]
    assert Patient.objects.get(pk=patient_id).label == ""


def test_viewing_a_patient_is_recorded_without_its_id(alice_api, alice_dicom_scan):
    patient_id = alice_dicom_scan["patient"]["id"]
    assert alice_api.get(f"/api/patients/{patient_id}/").status_code == 200
    event = AccessEvent.objects.get(action="view")
    assert (event.object_type, str(event.object_id), event.username) == ("patient", patient_id, "alice")
    assert "PHANTOM1" not in json.dumps(list(AccessEvent.objects.values()), default=str)


# --- Pages -------------------------------------------------------------------------------


@pytest.fixture
def alice_browser(client, alice):
    client.force_login(alice)
    return client


def test_patient_pages(alice_browser, alice_dicom_scan, alice_scan, fake_engine):
    listing = alice_browser.get("/patients/").content.decode()
    patient_id = alice_dicom_scan["patient"]["id"]
    assert f"/patients/{patient_id}/" in listing and "PHANTOM1" in listing
    assert 'id="ungrouped"' in listing  # the NIfTI scan without a Patient ID
    page = alice_browser.get(f"/patients/{patient_id}/").content.decode()
    assert alice_dicom_scan["id"] in page and alice_scan["id"] not in page
    assert 'id="adapt-section"' in page and 'id="adapt-needs-two"' in page


def test_the_scan_page_sets_the_patient(alice_browser, alice_scan, fake_engine):
    page = alice_browser.get(f"/scans/{alice_scan['id']}/").content.decode()
    assert 'id="patient-form"' in page and "carries no Patient ID" in page
    response = alice_browser.post(f"/scans/{alice_scan['id']}/", {"patient_id": "NIFTI-1"})
    assert response.status_code == 302
    assert Scan.objects.get(pk=alice_scan["id"]).patient.patient_id == "NIFTI-1"
    response = alice_browser.post(f"/scans/{alice_scan['id']}/", {"patient_id": "N" * 70})
    assert response.status_code == 200 and "at most 64 characters" in response.content.decode()


def test_the_upload_page_takes_a_patient_id(alice_browser, fake_engine):
    assert 'name="patient_id"' in alice_browser.get("/upload/").content.decode()
    alice_browser.post(
        "/upload/", {"file": SimpleUploadedFile("ct.nii.gz", factories.nifti_bytes()), "patient_id": "N-2"}
    )
    assert Scan.objects.get().patient.patient_id == "N-2"


def test_charlie_gets_404_on_alices_patient_page(client, charlie, alice_dicom_scan):
    client.force_login(charlie)
    assert client.get(f"/patients/{alice_dicom_scan['patient']['id']}/").status_code == 404
    assert "PHANTOM1" not in client.get("/patients/").content.decode()


def test_a_patient_goes_with_its_last_scan(alice_api, tmp_path):
    first = upload(alice_api, factories.dicom_zip_bytes(tmp_path / "a"), "a.zip").json()
    second = upload(alice_api, factories.dicom_zip_bytes(tmp_path / "b"), "b.zip").json()
    assert alice_api.delete(f"/api/scans/{first['id']}/").status_code == 204
    assert Patient.objects.filter(patient_id="PHANTOM1").exists()
    assert alice_api.delete(f"/api/scans/{second['id']}/").status_code == 204
    assert not Patient.objects.exists()
