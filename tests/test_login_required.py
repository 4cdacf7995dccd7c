"""Nothing is reachable without logging in: pages redirect to the login page, the API answers 401."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db

FAKE_ID = "00000000-0000-0000-0000-000000000000"


@pytest.mark.parametrize("url", ["/", "/upload/", "/jobs/", f"/jobs/{FAKE_ID}/"])
def test_pages_redirect_to_login(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(f"/accounts/login/?next={url}")


def test_login_page_is_public(client):
    response = client.get("/accounts/login/")
    assert response.status_code == 200
    assert b'name="password"' in response.content


def test_admin_requires_staff(client, alice):
    client.force_login(alice)
    assert client.get("/admin/").status_code == 302


@pytest.mark.parametrize(
    "method,url",
    [
        ("get", "/api/scans/"),
        ("post", "/api/scans/"),
        ("get", f"/api/scans/{FAKE_ID}/"),
        ("delete", f"/api/scans/{FAKE_ID}/"),
        ("get", "/api/jobs/"),
        ("post", "/api/jobs/"),
        ("get", f"/api/jobs/{FAKE_ID}/"),
        ("get", f"/api/jobs/{FAKE_ID}/labels.nii.gz"),
        ("get", f"/api/jobs/{FAKE_ID}/rtstruct.dcm"),
        ("get", f"/api/jobs/{FAKE_ID}/structures.zip"),
        ("get", f"/api/jobs/{FAKE_ID}/slice/"),
        ("get", "/api/models/"),
        ("get", "/api/schema/"),
    ],
)
def test_api_requires_authentication(anon_api, method, url):
    response = getattr(anon_api, method)(url)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_token_authentication(anon_api, alice):
    response = anon_api.post("/api/auth/token/", {"username": "alice", "password": "alice-password-123"})
    assert response.status_code == 200
    anon_api.credentials(HTTP_AUTHORIZATION=f"Token {response.json()['token']}")
    assert anon_api.get("/api/scans/").status_code == 200


def test_session_login_and_logout(client, alice):
    response = client.post("/accounts/login/", {"username": "alice", "password": "alice-password-123"})
    assert response.status_code == 302 and response["Location"] == "/jobs/"
    assert client.get("/api/jobs/").status_code == 200
    client.post("/accounts/logout/")
    assert client.get("/jobs/").status_code == 302
