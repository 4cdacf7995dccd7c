"""CSRF is enforced on the pages and on API calls made with the session cookie; API
clients that send a token (no cookie) do not need one."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


@pytest.fixture
def strict_browser(alice) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    return client


def csrf_token(client: Client, url: str) -> str:
    client.get(url)
    return client.cookies["csrftoken"].value


def test_page_post_without_token_is_forbidden(strict_browser):
    response = strict_browser.post("/upload/", {"name": "x"})
    assert response.status_code == 403
    assert b"CSRF" in response.content


def test_page_post_with_token_is_accepted(strict_browser, fake_engine):
    token = csrf_token(strict_browser, "/upload/")
    response = strict_browser.post("/upload/", {"name": "x", "csrfmiddlewaretoken": token})
    assert response.status_code == 200  # the form again, saying that no file was received
    assert b"No file was received" in response.content


def test_login_without_token_is_forbidden(alice):
    client = Client(enforce_csrf_checks=True)
    response = client.post("/accounts/login/", {"username": "alice", "password": "alice-password-123"})
    assert response.status_code == 403
    assert "_auth_user_id" not in client.session


def test_logout_without_token_is_forbidden(strict_browser):
    assert strict_browser.post("/accounts/logout/").status_code == 403
    assert strict_browser.get("/jobs/").status_code == 200, "still logged in"


def test_api_with_session_cookie_needs_the_token(strict_browser):
    response = strict_browser.post("/api/scans/", {"name": "x"})
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    token = csrf_token(strict_browser, "/upload/")
    response = strict_browser.post("/api/scans/", {"name": "x"}, headers={"X-CSRFToken": token})
    assert response.status_code == 400 and "No file was received" in response.json()["detail"]


def test_api_with_token_needs_no_csrf_token(alice):
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=alice).key}")
    response = client.post("/api/scans/", {"name": "x"}, format="multipart")
    assert response.status_code == 400 and "No file was received" in response.json()["detail"]
