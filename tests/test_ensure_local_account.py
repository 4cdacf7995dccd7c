"""``manage.py ensure_local_account``: creates the account once and prints its password once."""

from __future__ import annotations

import io
import re

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("ensure_local_account", *args, stdout=out)
    return out.getvalue()


def test_first_run_creates_the_account_and_prints_credentials():
    output = run()
    username = re.search(r"username: (\S+)", output).group(1)
    password = re.search(r"password: (\S+)", output).group(1)
    assert username == "physician" and len(password) >= 16
    user = authenticate(username=username, password=password)
    assert user is not None and not user.is_superuser
    assert user.password != password  # stored as a hash


def test_second_run_says_it_exists_and_prints_no_password():
    first = run()
    password = re.search(r"password: (\S+)", first).group(1)
    second = run()
    assert "already exists" in second
    assert password not in second and "password:" not in second
    assert get_user_model().objects.count() == 1


def test_passwords_are_random():
    a = re.search(r"password: (\S+)", run("--username", "a")).group(1)
    b = re.search(r"password: (\S+)", run("--username", "b")).group(1)
    assert a != b


def test_superuser_option():
    run("--username", "admin", "--superuser")
    assert get_user_model().objects.get(username="admin").is_superuser


def test_login_with_printed_credentials(client):
    output = run()
    password = re.search(r"password: (\S+)", output).group(1)
    response = client.post("/accounts/login/", {"username": "physician", "password": password})
    assert response.status_code == 302
    assert client.get("/jobs/").status_code == 200
