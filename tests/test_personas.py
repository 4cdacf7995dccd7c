"""Who sees what, for every URL of the app that takes a scan, job or patient id.

Personas: Alice owns the data; Bob is in her team "H&N" and sees what she shares with it
(view and download, never change); Charlie is in another team and gets 404 on everything
of Alice's; an anonymous client gets 401 (API) or the login page (pages). Patients are never
shared: Bob gets 404 on Alice's patient and never reads her Patient ID. The URLs are read
from the URL resolver, so a new URL that is not listed here fails ``test_every_url_is_listed``.
"""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.test import APIClient

from tests import factories
from tests.test_audit_job import auditing, post_audit  # noqa: F401  (``auditing`` is a fixture)
from tests.workflow import propagate, rtstruct_uid
from webapp.delineation.dicom.models import DicomPeer
from webapp.delineation.models import AccessEvent, Job, Patient, Scan, Team

pytestmark = pytest.mark.django_db

PATIENT = "Doe^Jane"  # the scans' name: it must never reach a refused response
PATIENT_ID = "PAT-424242"  # Alice's Patient ID: it must never reach Bob or Charlie

# Every URL that takes a scan, job or patient id: which object, and per method what Alice gets
# and what Bob gets while the scan is shared with his team (owner-only actions: 403; a patient
# is never shared: 404).
OBJECT_URLS = {
    "scan-detail": ("scan", {"get": (200, 200), "post": (302, 403)}),  # POST queues a job
    "scan-share": ("scan", {"post": (302, 403)}),
    "scan-unshare": ("scan", {"post": (302, 403)}),
    "job-viewer": ("job", {"get": (200, 200)}),
    "job-send": ("job", {"post": (302, 403)}),  # "Send to": the RTSTRUCT to one of the owner's DICOM destinations
    "api-scan-detail": ("scan", {"get": (200, 200), "delete": (204, 403), "patch": (200, 403)}),  # PATCH: patient
    "api-scan-share": ("scan", {"post": (200, 403)}),
    "api-scan-unshare": ("scan", {"post": (200, 403)}),
    "api-job-detail": ("job", {"get": (200, 200)}),
    "api-job-send": ("job", {"post": (202, 403)}),
    "api-job-labels": ("job", {"get": (200, 200)}),
    "api-job-structures-zip": ("job", {"get": (200, 200)}),
    "api-job-rtstruct": ("job", {"get": (200, 200)}),
    "api-job-seg": ("job", {"get": (200, 200)}),
    "api-job-ct-dicom": ("job", {"get": (200, 200)}),
    "api-job-slice": ("job", {"get": (200, 200)}),
    "api-job-edits": ("job", {"post": (201, 403)}),  # owners edit, team members read
    "api-job-revisions": ("job", {"get": (200, 200)}),
    "api-job-approve": ("job", {"post": (200, 403)}),
    "api-job-audit-json": ("audit_job", {"get": (200, 200)}),
    "api-job-propagation-json": ("propagation", {"get": (200, 200)}),
    "api-job-ddf": ("propagation", {"get": (200, 200)}),
    "api-job-final-rtstruct": ("propagation", {"get": (202, 202)}),  # queued: the worker writes it
    "api-job-choices": ("propagation", {"post": (200, 403)}),
    "patient-detail": ("patient", {"get": (200, 404), "post": (200, 404)}),  # POST: Adapt (refused, with why)
    "api-patient-detail": ("patient", {"get": (200, 404), "patch": (200, 404)}),
}
# The fixture holding each kind of object, and the key of the scan that is shared.
OBJECT_FIXTURES = {
    "scan": ("alice_data", "scan"),
    "job": ("alice_data", "scan"),
    "patient": ("alice_data", "scan"),
    "audit_job": ("alice_audit", "audit_scan"),
    "propagation": ("alice_propagated", "propagation_scan"),
}
# Request bodies beyond the team and model every call sends.
BODIES = {
    "api-scan-detail": {"patient_id": "PAT-0002"},
    "api-job-choices": {"choices": {"Brainstem": "direct"}},
    "api-job-edits": {"structure": "Brainstem", "plane": "axial", "mode": "delete", "first": 0, "last": 7},
    "api-job-approve": {"comment": "Checked"},
    "api-patient-detail": {"label": "Head and neck 1"},
    "job-send": {"destination": "TPS"},
    "api-job-send": {"destination": "TPS"},
}
# Lists of the user's data: Alice's ids appear only in hers (and in Bob's while shared, except
# the access log, which shows each user the events on the data they own).
LIST_URLS = {
    "job-list": True,
    "api-scan-list": True,
    "api-job-list": True,
    "api-access-log": False,  # does Bob see Alice's ids while she shares with him?
    "api-team-list": False,
    "patient-list": False,  # patients are never shared
    "api-patient-list": False,
}
# URLs that hold no patient data of anyone (or create the user's own): covered elsewhere.
OTHER_URLS = {"home", "upload", "api-models", "api-propagation-models", "api-token", "api-schema", "api-not-found"}
EXCLUDED_PREFIXES = ("admin/", "accounts/")  # the admin is staff only (test_login_required), login is public


def _app_urls() -> dict[str, URLPattern]:
    found: dict[str, URLPattern] = {}

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif not (prefix + str(pattern.pattern)).lstrip("^").startswith(EXCLUDED_PREFIXES):
                found[pattern.name] = pattern

    walk(get_resolver().url_patterns, "")
    return found


def _id_params(pattern: URLPattern) -> set[str]:
    route = pattern.pattern
    names = set(getattr(route, "converters", {})) or set(route.regex.groupindex)
    return names & {"pk", "scan_id", "job_id", "patient_id"}


def test_every_url_is_listed():
    urls = _app_urls()
    assert {n for n, p in urls.items() if _id_params(p)} == set(OBJECT_URLS)
    assert {n for n, p in urls.items() if not _id_params(p)} == set(LIST_URLS) | OTHER_URLS
    for name, (_, methods) in OBJECT_URLS.items():
        actions = getattr(urls[name].callback, "actions", None)  # DRF: the methods the route answers
        if actions is not None:  # DRF adds "head" to this dict on the first GET it serves
            assert set(actions) - {"head"} == set(methods), name


# --- The data and the personas ----------------------------------------------------------


@pytest.fixture
def teams(alice, bob, charlie) -> dict[str, Team]:
    hn = Team.objects.create(name="H&N")
    hn.members.add(alice, bob)
    physics = Team.objects.create(name="Physics")  # Bob's other team, which Alice is not in
    physics.members.add(bob)
    thorax = Team.objects.create(name="Thorax")
    thorax.members.add(charlie)
    return {"hn": hn, "physics": physics, "thorax": thorax}


def _login(user) -> APIClient:
    client = APIClient()  # session login: the same client for the pages and the API
    client.force_login(user)
    return client


@pytest.fixture
def personas(alice, bob, charlie) -> dict[str, APIClient]:
    return {"alice": _login(alice), "bob": _login(bob), "charlie": _login(charlie), "anonymous": APIClient()}


@pytest.fixture
def alice_data(alice_api, fake_engine, django_capture_on_commit_callbacks) -> dict:
    """A NIfTI scan of Alice named after a patient, of her patient PATIENT_ID, with a succeeded
    delineation (every download)."""
    upload = SimpleUploadedFile("ct.nii.gz", factories.nifti_bytes(), content_type="application/gzip")
    fields = {"file": upload, "name": PATIENT, "patient_id": PATIENT_ID}
    scan = alice_api.post("/api/scans/", fields, format="multipart").json()
    with django_capture_on_commit_callbacks(execute=True):
        job = alice_api.post("/api/jobs/", {"scan": scan["id"], "model": "hn-oar"}, format="json").json()
    assert Job.objects.get(pk=job["id"]).status == Job.Status.SUCCEEDED
    patient = Patient.objects.get(patient_id=PATIENT_ID)
    # Alice's DICOM destination for "Send to" (nothing is sent: the send stays queued here).
    DicomPeer.objects.create(name="TPS", ae_title="TPS1", host="127.0.0.1", port=104, owner=patient.owner)
    return {"scan": scan["id"], "job": job["id"], "job_scan": scan["id"], "patient": str(patient.id)}


@pytest.fixture
def alice_propagated(alice_api, planning, daily, fake_propagation, django_capture_on_commit_callbacks) -> dict:
    """A succeeded propagation of Alice's planning RTSTRUCT onto her daily scan (its downloads)."""
    capture, uid = django_capture_on_commit_callbacks, rtstruct_uid(planning)
    response = propagate(alice_api, daily["id"], planning["id"], capture, contours_rtstruct=uid)
    assert response.status_code == 201, response.content
    assert Job.objects.get(pk=response.json()["id"]).status == Job.Status.SUCCEEDED
    return {
        "propagation": response.json()["id"],
        "propagation_scan": daily["id"],
        "planning_scan": planning["id"],
        "contours_rtstruct": rtstruct_uid(planning),
    }


@pytest.fixture
def alice_audit(alice_api, auditing, tmp_path, django_capture_on_commit_callbacks) -> dict:
    """A DICOM scan with an RTSTRUCT of Alice and a succeeded contour audit on it (audit.json)."""
    archive = factories.dicom_zip_with_rtstruct(tmp_path / "rs", ("Brainstem",))
    upload = SimpleUploadedFile("ct-rs.zip", archive, content_type="application/zip")
    scan = alice_api.post("/api/scans/", {"file": upload, "name": PATIENT}, format="multipart").json()
    job = post_audit(alice_api, scan["id"], capture=django_capture_on_commit_callbacks).json()
    assert Job.objects.get(pk=job["id"]).status == Job.Status.SUCCEEDED
    return {"audit_job": job["id"], "audit_scan": scan["id"]}


def _share(scan_id: str, team: Team) -> None:
    scan = Scan.objects.get(pk=scan_id)
    scan.shared_with.add(team)


def _unshare(scan_id: str, team: Team) -> None:
    Scan.objects.get(pk=scan_id).shared_with.remove(team)


def _call(client: APIClient, method: str, url: str, data: dict):
    if method == "get":
        return client.get(url)
    if url.startswith("/api/"):
        return getattr(client, method)(url, data, format="json")
    return getattr(client, method)(url, data)


# --- Every object URL, every persona ------------------------------------------------------


@pytest.mark.parametrize(
    "name,method", [(name, method) for name, (_, methods) in OBJECT_URLS.items() for method in methods]
)
def test_object_url(request, personas, teams, name, method):
    kind, methods = OBJECT_URLS[name]
    fixture, scan_key = OBJECT_FIXTURES[kind]
    ids = request.getfixturevalue(fixture)
    object_id = ids[kind]
    scan_id = ids[scan_key]
    param = (_id_params(_app_urls()[name]) or {"pk"}).pop()
    url = reverse(name, kwargs={param: object_id}) + ("?plane=axial" if name == "api-job-slice" else "")
    alice_status, bob_shared_status = methods[method]
    data = {"team": teams["hn"].pk, "model": "hn-oar", **BODIES.get(name, {})}
    if name in ("scan-share", "api-scan-share"):
        data = {"team": teams["physics"].pk}  # Bob's own team: still not his scan to share

    anonymous = _call(personas["anonymous"], method, url, data)
    if name.startswith("api-"):
        assert anonymous.status_code == 401
    else:
        assert anonymous.status_code == 302 and anonymous["Location"].startswith("/accounts/login/")

    def refused(persona: str) -> None:
        response = _call(personas[persona], method, url, {**data, "team": teams["thorax"].pk})
        assert response.status_code == 404, (persona, response.content[:300])
        assert PATIENT not in response.content.decode(errors="replace")

    refused("charlie")
    refused("bob")  # not shared yet
    _share(scan_id, teams["hn"])
    refused("charlie")  # shared with a team he is not in
    patients_before = list(Patient.objects.values_list("id", "patient_id", "label"))
    choices_before = list(Job.objects.values_list("id", "choices"))
    response = _call(personas["bob"], method, url, data)
    assert response.status_code == bob_shared_status, response.content[:300]
    if not response.streaming:  # an answer, not a file (a DICOM download carries its own Patient ID)
        assert PATIENT_ID not in response.content.decode()  # Alice's Patient ID is hers
    if bob_shared_status in (403, 404):
        if bob_shared_status == 403:
            assert "Only the owner of this scan (alice)" in response.content.decode()
        assert Scan.objects.filter(pk=scan_id, shared_with=teams["hn"]).exists()  # nothing changed
        assert not Scan.objects.filter(shared_with=teams["physics"]).exists()
        assert Job.objects.filter(owner__username="bob").count() == 0
        assert list(Patient.objects.values_list("id", "patient_id", "label")) == patients_before
        assert list(Job.objects.values_list("id", "choices")) == choices_before
        assert not Patient.objects.filter(owner__username="bob").exists()
    _unshare(scan_id, teams["hn"])
    refused("bob")

    _share(scan_id, teams["hn"])  # so that Alice's unshare has something to undo
    response = _call(personas["alice"], method, url, {**data, "team": teams["hn"].pk})
    assert response.status_code == alice_status, response.content[:300]
    assert not AccessEvent.objects.filter(username="charlie").exists()  # a 404 records nothing
    changes = AccessEvent.objects.filter(username="bob", action__in=["share", "unshare", "delete", "queue"])
    assert not changes.exists()


@pytest.mark.parametrize("name", sorted(LIST_URLS))
def test_list_url(personas, teams, alice_data, name):
    url = reverse(name)
    anonymous = personas["anonymous"].get(url)
    assert anonymous.status_code == (401 if name.startswith("api-") else 302)
    alice_ids = (alice_data["scan"], alice_data["job"], alice_data["patient"])

    def shows_alice(persona: str) -> bool:
        response = personas[persona].get(url)
        assert response.status_code == 200
        body = response.content.decode()
        assert "H&N" not in body or persona != "charlie"  # another team's name is not shown either
        assert PATIENT_ID not in body or persona == "alice"
        return any(i in body for i in alice_ids)

    if name != "api-team-list":
        assert shows_alice("alice")
    assert not shows_alice("charlie") and not shows_alice("bob")
    _share(alice_data["scan"], teams["hn"])
    assert not shows_alice("charlie")
    assert shows_alice("bob") == LIST_URLS[name]
    _unshare(alice_data["scan"], teams["hn"])
    assert not shows_alice("bob")


def test_jobs_of_a_scan_list(personas, teams, alice_data):
    url = f"/api/jobs/?scan={alice_data['scan']}"
    assert personas["bob"].get(url).json() == []
    _share(alice_data["scan"], teams["hn"])
    assert [j["id"] for j in personas["bob"].get(url).json()] == [alice_data["job"]]
    assert personas["charlie"].get(url).json() == []


def test_queue_on_a_shared_scan_is_refused(personas, teams, alice_data):
    body = {"scan": alice_data["scan"], "model": "hn-oar"}
    assert personas["charlie"].post("/api/jobs/", body, format="json").status_code == 400
    _share(alice_data["scan"], teams["hn"])
    response = personas["charlie"].post("/api/jobs/", body, format="json")
    assert response.status_code == 400 and "No scan with id" in response.content.decode()
    response = personas["bob"].post("/api/jobs/", body, format="json")
    assert response.status_code == 403
    assert "Only the owner of this scan (alice) can start a job on it" in response.json()["detail"]
    assert Job.objects.count() == 1


# --- Sharing through the API and the scan page ------------------------------------------


def test_share_and_unshare_api(personas, teams, alice_data):
    alice, url = personas["alice"], f"/api/scans/{alice_data['scan']}"
    response = alice.post(f"{url}/share/", {"team": teams["hn"].pk}, format="json")
    assert response.status_code == 200
    assert response.json()["shared_with"] == [{"id": teams["hn"].pk, "name": "H&N"}]
    assert response.json()["owner"] == "alice"
    bob_view = personas["bob"].get(f"{url}/").json()
    assert bob_view["owner"] == "alice" and bob_view["jobs"] == [alice_data["job"]]
    assert alice.post(f"{url}/share/", {"team": teams["hn"].pk}, format="json").status_code == 200  # again: no change
    response = alice.post(f"{url}/unshare/", {"team": teams["hn"].pk}, format="json")
    assert response.status_code == 200 and response.json()["shared_with"] == []
    events = AccessEvent.objects.filter(action__in=["share", "unshare"]).order_by("created", "id")
    assert [(e.action, e.username, e.object_type, str(e.object_id), e.team) for e in events] == [
        ("share", "alice", "scan", alice_data["scan"], "H&N"),
        ("unshare", "alice", "scan", alice_data["scan"], "H&N"),
    ]
    assert {e["action"] for e in alice.get("/api/access-log/").json()} >= {"share", "unshare"}
    assert "Doe" not in alice.get("/api/access-log/").content.decode()


@pytest.mark.parametrize(
    "path,team,message",
    [
        ("share", "physics", "You are not a member of a team with id"),
        ("share", "thorax", "You are not a member of a team with id"),
        ("share", "nonsense", "send its id as 'team', a number"),
        ("unshare", "hn", "This scan is not shared with a team with id"),
    ],
)
def test_sharing_refused_with_a_message(personas, teams, alice_data, path, team, message):
    team_id = teams[team].pk if team in teams else team
    response = personas["alice"].post(f"/api/scans/{alice_data['scan']}/{path}/", {"team": team_id}, format="json")
    assert response.status_code == 400
    assert message in response.json()["detail"]
    assert not Scan.objects.get(pk=alice_data["scan"]).shared_with.exists()
    assert not AccessEvent.objects.filter(action__in=["share", "unshare"]).exists()


def test_teams_list_shows_only_mine(personas, teams):
    assert personas["alice"].get("/api/teams/").json() == [
        {"id": teams["hn"].pk, "name": "H&N", "members": ["alice", "bob"]}
    ]
    assert [t["name"] for t in personas["bob"].get("/api/teams/").json()] == ["H&N", "Physics"]


def test_scan_page_sharing_controls(personas, teams, alice_data):
    alice, url = personas["alice"], f"/scans/{alice_data['scan']}/"
    page = alice.get(url).content.decode()
    assert 'id="share-form"' in page and 'id="not-shared"' in page and "H&amp;N" in page
    response = alice.post(f"{url}share/", {"team": teams["hn"].pk})
    assert response.status_code == 302 and response["Location"] == url
    page = alice.get(url).content.decode()
    assert 'id="shared-with"' in page and "Stop sharing" in page
    bob_page = personas["bob"].get(url).content.decode()
    assert 'id="shared-notice"' in bob_page and "alice shares this scan with you" in bob_page
    assert 'id="delineate-button"' not in bob_page and 'id="share-form"' not in bob_page
    jobs_page = personas["bob"].get("/jobs/").content.decode()
    assert alice_data["job"] in jobs_page and "shared by alice" in jobs_page
    assert alice.post(f"{url}unshare/", {"team": teams["hn"].pk}).status_code == 302
    assert personas["bob"].get(url).status_code == 404
    assert [e.action for e in AccessEvent.objects.filter(action__in=["share", "unshare"]).order_by("id")] == [
        "share",
        "unshare",
    ]


def test_share_page_answers_post_only(personas, alice_data):
    assert personas["alice"].get(f"/scans/{alice_data['scan']}/share/").status_code == 405


# --- Team membership, access log ---------------------------------------------------------


def test_leaving_the_team_ends_access(personas, teams, bob, alice_data):
    _share(alice_data["scan"], teams["hn"])
    assert personas["bob"].get(f"/api/jobs/{alice_data['job']}/labels.nii.gz").status_code == 200
    teams["hn"].members.remove(bob)
    assert personas["bob"].get(f"/api/jobs/{alice_data['job']}/labels.nii.gz").status_code == 404
    assert personas["bob"].get("/api/scans/").json() == []


def test_team_members_access_is_in_the_owners_log(personas, teams, alice_data):
    _share(alice_data["scan"], teams["hn"])
    assert personas["bob"].get(f"/api/jobs/{alice_data['job']}/rtstruct.dcm").status_code == 200
    assert personas["bob"].get(f"/jobs/{alice_data['job']}/").status_code == 200
    alice_log = personas["alice"].get("/api/access-log/").json()
    assert {(e["username"], e["action"], e["object_id"]) for e in alice_log} >= {
        ("bob", "download", alice_data["job"]),
        ("bob", "view", alice_data["job"]),
    }
    assert personas["bob"].get("/api/access-log/").json() == []  # the log of Alice's data is Alice's
    assert personas["charlie"].get("/api/access-log/").json() == []


def test_admin_creates_a_team(client, django_user_model, alice, bob, alice_data):
    """As docs/security.md tells an administrator: Teams, Add, a name and the members."""
    admin = django_user_model.objects.create_superuser("admin", password="admin-password-123")
    client.force_login(admin)
    response = client.post("/admin/delineation/team/add/", {"name": "Prostate", "members": [alice.pk, bob.pk]})
    assert response.status_code == 302, response.content[:500]
    team = Team.objects.get(name="Prostate")
    assert set(team.members.values_list("username", flat=True)) == {"alice", "bob"}
    assert client.get("/admin/delineation/team/").status_code == 200
    alice_client = _login(alice)
    response = alice_client.post(f"/api/scans/{alice_data['scan']}/share/", {"team": team.pk}, format="json")
    assert response.status_code == 200
    assert _login(bob).get(f"/api/scans/{alice_data['scan']}/").status_code == 200


# --- Patients and propagations of a shared scan --------------------------------------------


def test_a_shared_scan_does_not_show_its_patient(personas, teams, alice_data):
    """The scan is Bob's to view; its patient (Patient ID, label, page) stays Alice's."""
    scan_url = f"/api/scans/{alice_data['scan']}/"
    assert personas["alice"].get(scan_url).json()["patient"]["patient_id"] == PATIENT_ID
    _share(alice_data["scan"], teams["hn"])
    bob = personas["bob"]
    response = bob.get(scan_url)
    assert response.status_code == 200 and response.json()["patient"] is None
    assert PATIENT_ID not in response.content.decode()
    assert [s["patient"] for s in bob.get("/api/scans/").json()] == [None]
    page = bob.get(f"/scans/{alice_data['scan']}/").content.decode()
    assert PATIENT_ID not in page and 'id="patient-form"' not in page and alice_data["patient"] not in page
    assert 'id="patient-form"' in personas["alice"].get(f"/scans/{alice_data['scan']}/").content.decode()
    assert bob.get("/api/patients/").json() == [] and PATIENT_ID not in bob.get("/patients/").content.decode()
    response = bob.post(f"/scans/{alice_data['scan']}/", {"patient_id": "BOB-1"})
    assert response.status_code == 403 and "can set the patient of it" in response.content.decode()
    assert not Patient.objects.filter(owner__username="bob").exists()
    assert Scan.objects.get(pk=alice_data["scan"]).patient.patient_id == PATIENT_ID


def test_only_the_owner_propagates_onto_a_shared_scan(personas, teams, bob_api, alice_propagated, tmp_path):
    """Bob sees Alice's propagation, but neither propagates onto her daily scan nor from her
    planning scan onto his own scan of the same Patient ID."""
    _share(alice_propagated["propagation_scan"], teams["hn"])
    _share(alice_propagated["planning_scan"], teams["hn"])
    bob = personas["bob"]
    job = bob.get(f"/api/jobs/{alice_propagated['propagation']}/").json()
    assert job["kind"] == "propagate" and job["owner"] == "alice" and job["propagation"]["structures"]
    planning_id = alice_propagated["planning_scan"]
    fields = {"contours_rtstruct": alice_propagated["contours_rtstruct"]}
    response = propagate(bob, alice_propagated["propagation_scan"], planning_id, **fields)
    assert response.status_code == 403 and "can start a job on it" in response.json()["detail"]
    upload = SimpleUploadedFile("d.zip", factories.dicom_zip_bytes(tmp_path / "bob"), content_type="application/zip")
    own = bob_api.post("/api/scans/", {"file": upload}, format="multipart").json()  # same Patient ID, Bob's patient
    response = propagate(bob, own["id"], planning_id, **fields)
    assert response.status_code == 403 and "can propagate the contours of it" in response.json()["detail"]
    assert not Job.objects.filter(owner__username="bob").exists()
    response = bob.post(
        f"/api/jobs/{alice_propagated['propagation']}/choices/", {"choices": {"Brainstem": "direct"}}, format="json"
    )
    assert response.status_code == 403 and Job.objects.get(pk=alice_propagated["propagation"]).choices == {}
