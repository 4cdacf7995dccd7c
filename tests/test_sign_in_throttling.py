"""Sign-in attempts are limited (docs/security.md, "Sign-in attempts"): after the per-address
limit the token endpoint and the login page answer 429 with a message, even to the right
password; a header the client sends does not make it another address; the per-username
limit holds across addresses; the limits are settings."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from webapp.delineation.throttling import LoginAddressThrottle, LoginUsernameThrottle

pytestmark = pytest.mark.django_db

RIGHT = "alice-password-123"


@pytest.fixture
def rates(monkeypatch):
    """The rates as the settings give them, small enough for a test."""
    monkeypatch.setattr(LoginAddressThrottle, "THROTTLE_RATES", {"login": "5/min", "login_username": "8/hour"})
    monkeypatch.setattr(LoginUsernameThrottle, "THROTTLE_RATES", {"login": "5/min", "login_username": "8/hour"})


def token(password: str, username: str = "alice", address: str = "10.0.0.1", **extra):
    return APIClient().post(
        "/api/auth/token/", {"username": username, "password": password}, REMOTE_ADDR=address, **extra
    )


def test_default_limits_are_settings(settings):
    rates = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
    assert rates == {"login": "10/min", "login_username": "30/hour"}
    assert LoginAddressThrottle.THROTTLE_RATES is not None
    assert settings.REST_FRAMEWORK["NUM_PROXIES"] == 0


def test_token_endpoint_refuses_after_the_limit_even_the_right_password(alice):
    for _ in range(10):
        assert token("wrong").status_code == 400
    response = token(RIGHT)
    assert response.status_code == 429, response.content
    detail = response.json()["detail"]
    assert "Too many sign-in attempts" in detail and "Wait 1 minute" in detail
    assert "token" not in response.json()
    assert token(RIGHT, address="10.0.0.2").status_code == 200  # another computer is not held up


def test_a_forwarded_for_header_does_not_make_another_address(alice, rates):
    for i in range(5):
        assert token("wrong", HTTP_X_FORWARDED_FOR=f"192.0.2.{i}").status_code == 400
    assert token(RIGHT, HTTP_X_FORWARDED_FOR="192.0.2.99").status_code == 429


def test_per_username_limit_across_addresses(alice, rates):
    for i in range(8):
        assert token("wrong", address=f"10.1.0.{i}").status_code == 400
    assert token(RIGHT, address="10.1.0.50").status_code == 429
    assert token("x", username="bob", address="10.1.0.51").status_code == 400  # other names go on


def test_login_page_refuses_after_the_limit(client, alice, rates):
    for _ in range(5):
        response = client.post("/accounts/login/", {"username": "alice", "password": "wrong"}, REMOTE_ADDR="10.2.0.1")
        assert response.status_code == 200 and b"did not match" in response.content
    response = client.post("/accounts/login/", {"username": "alice", "password": RIGHT}, REMOTE_ADDR="10.2.0.1")
    assert response.status_code == 429
    assert b"Too many sign-in attempts" in response.content
    assert "_auth_user_id" not in client.session
    assert client.get("/accounts/login/", REMOTE_ADDR="10.2.0.1").status_code == 200  # the page itself still shows
    response = client.post("/accounts/login/", {"username": "alice", "password": RIGHT}, REMOTE_ADDR="10.2.0.2")
    assert response.status_code == 302


def test_the_page_and_the_api_share_the_count(client, alice, rates):
    for _ in range(5):
        assert token("wrong", address="10.3.0.1").status_code == 400
    response = client.post("/accounts/login/", {"username": "alice", "password": RIGHT}, REMOTE_ADDR="10.3.0.1")
    assert response.status_code == 429


@pytest.mark.parametrize("body", [[], ["alice"], "alice", 3])
def test_a_body_that_is_not_an_object_is_a_400(body):
    assert APIClient().post("/api/auth/token/", body, format="json").status_code == 400
