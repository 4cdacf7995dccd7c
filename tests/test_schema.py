"""The OpenAPI schema at /api/schema/ documents the API (for logged-in users)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_schema(alice_api):
    response = alice_api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    for path in (
        "/api/scans/",
        "/api/scans/{id}/",
        "/api/jobs/",
        "/api/jobs/{id}/",
        "/api/jobs/{id}/labels.nii.gz",
        "/api/jobs/{id}/rtstruct.dcm",
        "/api/jobs/{id}/structures.zip",
        "/api/jobs/{id}/audit.json",
        "/api/jobs/{id}/slice/",
        "/api/jobs/{id}/propagation.json",
        "/api/jobs/{id}/ddf.nii.gz",
        "/api/jobs/{id}/choices/",
        "/api/jobs/{id}/final_rtstruct.dcm",
        "/api/patients/",
        "/api/patients/{id}/",
        "/api/models/",
        "/api/propagation-models/",
        "/api/scans/{id}/share/",
        "/api/scans/{id}/unshare/",
        "/api/teams/",
        "/api/access-log/",
    ):
        assert path in paths, sorted(paths)
    share = paths["/api/scans/{id}/share/"]["post"]
    assert {"200", "400", "403"} <= set(share["responses"])
    assert "application/json" in share["requestBody"]["content"]
    upload = paths["/api/scans/"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload
    assert "patient_id" in schema["components"]["schemas"]["ScanUploadRequest"]["properties"]
    assert "patch" in paths["/api/scans/{id}/"] and "post" in paths["/api/jobs/{id}/choices/"]
    job_request = schema["components"]["schemas"]["JobCreateRequest"]["properties"]
    assert {"planning_scan", "contours_rtstruct", "contours_job"} <= set(job_request)
    assert {"tokenAuth", "cookieAuth"} <= set(schema["components"]["securitySchemes"])


def test_schema_yaml_by_default(alice_api):
    response = alice_api.get("/api/schema/")
    assert response.status_code == 200
    assert b"openapi:" in response.content
