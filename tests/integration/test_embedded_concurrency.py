"""The embedded default under concurrent use: `make run`'s web server (gunicorn, threads,
static files by WhiteNoise) and a worker beside it on SQLite and the SQLite broker. Uploads at once while many GETs run get no 5xx (no
"database is locked") and no refused or reset connection."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests import factories
from tests.stack import Stack

pytestmark = pytest.mark.integration

UPLOADS, GETS, ROUNDS = 10, 50, 4


@pytest.fixture
def embedded(tmp_path):
    stack = Stack(
        tmp_path,
        database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}",
    )
    try:
        yield stack.start()
    finally:
        stack.stop()


def test_concurrent_uploads_and_gets_get_no_5xx_and_no_reset(embedded):
    token = embedded.token(*embedded.create_account())
    scans = [factories.nifti_bytes(shape=(64, 64, 32), seed=seed) for seed in range(UPLOADS)]

    def upload(n: int) -> str:
        # A patient for each upload, some shared: the scan and its patient are written in one transaction.
        fields = {"file": ("ct.nii.gz", scans[n]), "patient_id": f"P{n % 4}"}
        try:
            response = embedded.api("POST", "/api/scans/", token, fields=fields)
        except Exception as exc:  # a refused or reset connection
            return f"upload: {type(exc).__name__}: {exc}"
        return "" if response.status == 201 else f"upload: {response.status} {response.data[:300]!r}"

    def get(n: int) -> str:
        path = ("/api/scans/", "/api/jobs/", "/api/models/", "/accounts/login/", "/static/css/app.css")[n % 5]
        try:
            response = embedded.api("GET", path, token)
        except Exception as exc:
            return f"GET {path}: {type(exc).__name__}: {exc}"
        return "" if response.status == 200 else f"GET {path}: {response.status}"

    failures: list[str] = []
    for _ in range(ROUNDS):
        with ThreadPoolExecutor(UPLOADS + GETS) as pool:
            futures = [pool.submit(upload, n) for n in range(UPLOADS)]
            futures += [pool.submit(get, n) for n in range(GETS)]
            failures += [f.result() for f in futures if f.result()]
    assert failures == [], "\n".join(failures) + "\n" + embedded.log_tail("web", 60)
    listed = json.loads(embedded.api("GET", "/api/scans/", token).data)
    assert len(listed) == UPLOADS * ROUNDS
