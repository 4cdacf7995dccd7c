"""Upload with de-identification: the stored files and the scan carry no patient identity,
the original files are gone, and the API and the scan page say which profile was applied."""

from __future__ import annotations

import pydicom
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests import factories
from webapp.delineation.models import Patient, Scan

pytestmark = pytest.mark.django_db

PATIENT_NAME, PATIENT_ID = "Doe^Jane", "PID-424242"
PROFILE = "DICOM PS3.15 Annex E Basic Profile"


def identified_series(directory) -> list:
    """A small CT series whose headers name the patient (and a private tag repeats it)."""
    paths = factories.dicom_series(directory)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, "19700101"
        ds.private_block(0x0011, "HOSPITAL", create=True).add_new(0x01, "LO", PATIENT_ID)
        ds.save_as(path)
    return paths


@pytest.fixture
def identified_zip(tmp_path) -> bytes:
    paths = identified_series(tmp_path / "Doe_Jane")
    return factories.zip_bytes({f"Doe_Jane/{p.name}": p.read_bytes() for p in paths})


@pytest.fixture
def alice_browser(client, alice):
    client.force_login(alice)
    return client


def stored_files(media_root, scan_id: str) -> list:
    return sorted(p for p in (media_root / "scans" / scan_id).rglob("*") if p.is_file())


def assert_no_identity(files) -> None:
    assert files
    for path in files:
        raw = path.read_bytes()
        assert b"Doe" not in raw and PATIENT_ID.encode() not in raw and b"19700101" not in raw, path
        assert "Doe" not in str(path) and "Jane" not in str(path)
        ds = pydicom.dcmread(path)
        assert ds.PatientName == "" and ds.PatientID.startswith("DEID-") and ds.PatientIdentityRemoved == "YES"


def test_zip_upload_with_deidentification(alice_api, alice_browser, identified_zip, media_root):
    upload = SimpleUploadedFile("Doe^Jane.zip", identified_zip, content_type="application/zip")
    response = alice_api.post("/api/scans/", {"file": upload, "deidentify": "true"}, format="multipart")
    assert response.status_code == 201, response.content
    body = response.json()
    files = stored_files(media_root, body["id"])
    assert len(files) == 8 and all(p.parent.name == "deidentified" for p in files)
    assert not (media_root / "scans" / body["id"] / "original").exists()  # the files as sent are gone
    assert_no_identity(files)
    assert "Doe" not in body["name"] and body["name"] == "De-identified scan"
    record = body["deidentification"]
    assert record["profile"] == PROFILE and record["files"] == 8 and record["uids_replaced"] >= 8 + 3
    assert record["codes"][0] == {
        "value": "113100",
        "scheme": "DCM",
        "meaning": "Basic Application Confidentiality Profile",
    }
    assert body["deidentified"] == f"De-identified: {PROFILE}"
    # The engine reads the de-identified series; nothing else of the upload is shown.
    (series,) = body["preflight"]["series"]
    assert series["status"] == "ok" and series["size"] == [16, 16, 8]
    assert "Doe" not in str(body)
    page = alice_browser.get(f"/scans/{body['id']}/")
    assert page.status_code == 200
    text = page.content.decode()
    assert f"De-identified: {PROFILE}" in text and "Doe" not in text


def test_folder_upload_with_deidentification_drops_other_files(alice_api, tmp_path, media_root):
    paths = identified_series(tmp_path / "src")
    files = [SimpleUploadedFile(p.name, p.read_bytes()) for p in paths]
    files.append(SimpleUploadedFile("DICOMDIR", b"\0" * 128 + b"DICM" + PATIENT_ID.encode()))
    relative = [f"Doe_Jane/CT/{p.name}" for p in paths] + ["Doe_Jane/DICOMDIR"]
    response = alice_api.post(
        "/api/scans/",
        {"files": files, "paths": relative, "deidentify": "on", "name": "HN study 12"},
        format="multipart",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "HN study 12"  # a name typed by the user is kept
    stored = stored_files(media_root, body["id"])
    assert len(stored) == 8 and body["file_count"] == 8
    assert_no_identity(stored)
    assert body["deidentification"]["dropped_files"] == 1
    assert "other_file_names" not in body["preflight"]["upload"]


def test_without_the_option_the_files_are_stored_unchanged(alice_api, alice_browser, identified_zip, media_root):
    upload = SimpleUploadedFile("Doe^Jane.zip", identified_zip, content_type="application/zip")
    response = alice_api.post("/api/scans/", {"file": upload}, format="multipart")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["deidentification"] is None and body["deidentified"].startswith("Not de-identified")
    (stored,) = stored_files(media_root, body["id"])
    assert stored.read_bytes() == identified_zip
    page = alice_browser.get(f"/scans/{body['id']}/").content.decode()
    assert "Not de-identified: the files are stored as uploaded." in page


def test_the_setting_makes_it_the_default(alice_api, identified_zip, media_root, settings):
    settings.DELINEO_DEIDENTIFY_DEFAULT = True
    upload = SimpleUploadedFile("Doe^Jane.zip", identified_zip, content_type="application/zip")
    body = alice_api.post("/api/scans/", {"file": upload}, format="multipart").json()
    assert body["deidentification"]["profile"] == PROFILE
    assert_no_identity(stored_files(media_root, body["id"]))
    # ...and an explicit false still stores the upload as sent.
    upload = SimpleUploadedFile("Doe^Jane.zip", identified_zip, content_type="application/zip")
    body = alice_api.post("/api/scans/", {"file": upload, "deidentify": "false"}, format="multipart").json()
    assert body["deidentification"] is None


def test_nifti_has_nothing_to_deidentify(alice_api, alice_browser, media_root):
    data = factories.nifti_bytes()
    upload = SimpleUploadedFile("Doe_Jane.nii.gz", data)
    response = alice_api.post("/api/scans/", {"file": upload, "deidentify": "true"}, format="multipart")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["deidentification"]["profile"] is None
    assert "NIfTI file has no DICOM header" in body["deidentified"]
    assert body["name"] == "NIfTI scan"
    (stored,) = stored_files(media_root, body["id"])
    assert stored.name == "image.nii.gz" and stored.read_bytes() == data
    assert "NIfTI file has no DICOM header" in alice_browser.get(f"/scans/{body['id']}/").content.decode()


def test_a_bad_option_value_is_refused(alice_api, identified_zip):
    upload = SimpleUploadedFile("a.zip", identified_zip, content_type="application/zip")
    response = alice_api.post("/api/scans/", {"file": upload, "deidentify": "perhaps"}, format="multipart")
    assert response.status_code == 400 and "deidentify" in response.json()["detail"]
    assert Scan.objects.count() == 0


def test_the_upload_page_offers_the_option_and_uses_it(alice_browser, identified_zip, media_root, settings):
    client = alice_browser
    assert 'id="deidentify"' in client.get("/upload/").content.decode()
    settings.DELINEO_DEIDENTIFY_DEFAULT = True
    assert "checked" in client.get("/upload/").content.decode().split('id="deidentify"')[1].split(">")[0]
    upload = SimpleUploadedFile("Doe^Jane.zip", identified_zip, content_type="application/zip")
    response = client.post("/upload/", {"file": upload, "deidentify": "on"})
    assert response.status_code == 302, response.content
    scan = Scan.objects.get()
    assert scan.deidentification["profile"] == PROFILE and scan.name == "De-identified scan"
    assert_no_identity(stored_files(media_root, str(scan.id)))


def test_deidentified_uploads_are_grouped_by_the_entered_patient_id(alice_api, tmp_path, media_root):
    """The files' Patient ID is a new pseudonym per upload, so the entered one groups them;
    it is kept on Alice's patient only, never written into the stored files."""

    def upload(folder: str, **fields) -> dict:
        paths = identified_series(tmp_path / folder)
        archive = factories.zip_bytes({p.name: p.read_bytes() for p in paths})
        file = SimpleUploadedFile(f"{folder}.zip", archive, content_type="application/zip")
        response = alice_api.post("/api/scans/", {"file": file, "deidentify": "true", **fields}, format="multipart")
        assert response.status_code == 201, response.content
        return response.json()

    planning = upload("planning", patient_id="HN-007", patient_label="Head and neck 7")
    daily = upload("daily", patient_id="HN-007")
    assert planning["patient"]["id"] == daily["patient"]["id"]
    assert planning["patient"]["patient_id"] == "HN-007" and planning["patient"]["label"] == "Head and neck 7"
    for scan in (planning, daily):
        files = stored_files(media_root, scan["id"])
        assert_no_identity(files)
        assert all(b"HN-007" not in p.read_bytes() for p in files)
    # Without an entered ID each upload is a patient of its own, under its pseudonym.
    first, second = upload("first"), upload("second")
    pseudonyms = {first["patient"]["patient_id"], second["patient"]["patient_id"]}
    assert len(pseudonyms) == 2 and all(p.startswith("DEID-") for p in pseudonyms)
    assert pydicom.dcmread(stored_files(media_root, first["id"])[0]).PatientID == first["patient"]["patient_id"]
    assert not Patient.objects.filter(patient_id=PATIENT_ID).exists()  # the original ID is nowhere
    assert Patient.objects.count() == 3
