"""``python manage.py dicom_node`` as ``make run`` starts it: a process of its own on its own
database, a peer added with ``manage.py dicom_peer add``, dcmtk's echoscu and storescu as
the peer; the study becomes a scan, and SIGTERM stops the node cleanly."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.dicom_peers import case_files, free_port, need_dcmtk

REPO = Path(__file__).resolve().parent.parent


def manage(env: dict, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result


def test_dicom_node_command_receives_a_study_and_stops_on_sigterm(tmp_path):
    need_dcmtk()
    database, port = tmp_path / "db.sqlite3", free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "webapp.settings",
        "DATABASE_URL": f"sqlite:///{database}",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}",
        "DICOM_NODE_PORT": str(port),
        "DICOM_NODE_SERIES_QUIET_S": "1",
        "DELINEO_UPLOAD_PREFLIGHT": "false",  # the pre-flight has its own tests; this one is about the process
    }
    manage(env, "migrate", "--noinput")
    manage(env, "ensure_local_account", "--username", "alice")
    added = manage(env, "dicom_peer", "add", "CT_SIM", "--ae-title", "CTSIM1", "--host", "127.0.0.1",
                   "--port", "104", "--owner", "alice")  # fmt: skip
    assert "AE title CTSIM1" in added.stdout
    node = subprocess.Popen(
        [sys.executable, "manage.py", "dicom_node"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = node.stdout.readline()
        while "configured peer" not in line and node.poll() is None:
            line = node.stdout.readline()
        assert f"DICOM node DELINEO listening on 127.0.0.1:{port}; 1 configured peer(s)" in line
        echo = ["echoscu", "-aec", "DELINEO", "127.0.0.1", str(port)]
        assert subprocess.run([*echo[:1], "-aet", "CTSIM1", *echo[1:]], capture_output=True, timeout=30).returncode == 0
        stranger = subprocess.run([*echo[:1], "-aet", "STRANGER", *echo[1:]], capture_output=True, timeout=30)
        assert stranger.returncode != 0
        images, _ = case_files("pt_11")
        store = ["storescu", "-aet", "CTSIM1", "-aec", "DELINEO", "127.0.0.1", str(port), *map(str, images[:5])]
        assert subprocess.run(store, capture_output=True, timeout=60).returncode == 0
        deadline, rows = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            with sqlite3.connect(database) as db:
                rows = db.execute("SELECT state, instances, scan_id FROM delineation_dicomreceipt").fetchall()
            if rows and rows[0][0] not in ("receiving", "ingesting"):  # wait for ingested or failed
                break
            time.sleep(0.5)
        assert len(rows) == 1 and rows[0][:2] == ("ingested", 5) and rows[0][2]
        with sqlite3.connect(database) as db:
            query = "SELECT calling_ae FROM delineation_accessevent WHERE action='dicom_rejected'"
            rejected = db.execute(query).fetchall()
        assert rejected == [("STRANGER",)]
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            code = node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
            raise
    assert code == 0


def test_make_run_starts_the_node_and_the_dockerfile_exposes_its_port():
    makefile = (REPO / "Makefile").read_text()
    run = makefile[makefile.index("\nrun:") : makefile.index("\ntest:")]
    assert "manage.py dicom_node" in run and "$$node" in run
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "EXPOSE 8000 11112" in dockerfile and "DICOM_NODE_HOST=0.0.0.0" in dockerfile
