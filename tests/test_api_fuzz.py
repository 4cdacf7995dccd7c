"""Fuzzing the API from its OpenAPI schema (schemathesis): every operation, with requests
generated from the schema (and requests that break it), sent to the WSGI application as
Alice with her API token. No response may be a server error, and each must match what the
schema declares (status code, content type, body).

Bounded and reproducible: 25 derandomized examples per operation, a few seconds each. For a
longer random search by hand: ``DELINEO_FUZZ_EXAMPLES=500 pytest tests/test_api_fuzz.py``.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from webapp.delineation.models import Scan

pytestmark = pytest.mark.django_db

schema = schemathesis.openapi.from_dict(SchemaGenerator().get_schema(request=None, public=True))
schema.app = get_wsgi_application()
_EXAMPLES = int(os.environ.get("DELINEO_FUZZ_EXAMPLES", "0"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def alice_token(alice, alice_dicom_scan, fake_engine) -> str:
    """Alice's token; she owns a scan, so listing endpoints return real objects to check."""
    assert Scan.objects.filter(owner=alice).exists()
    return Token.objects.create(user=alice).key


@schema.parametrize()
@settings(
    max_examples=_EXAMPLES or 25,
    derandomize=not _EXAMPLES,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
def test_api_conforms_to_its_schema(case, alice_token):
    case.call_and_validate(headers={"Authorization": f"Token {alice_token}"}, checks=CHECKS)


def test_the_fuzzed_schema_is_the_served_one(alice_api):
    """The schema fuzzed above is the one GET /api/schema/ serves."""
    served = alice_api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    assert set(served["paths"]) == set(schema.raw_schema["paths"])
