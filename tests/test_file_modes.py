"""Patient data on disk is private to the service user and its group: uploads and job
outputs are mode 640 in folders of mode 750, whatever the umask of the shell that started
the server, and the SQLite database (API tokens, sessions) is 600."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests import factories

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parent.parent


def modes_under(root: Path) -> tuple[dict[str, int], dict[str, int]]:
    files, folders = {}, {}
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        (folders if path.is_dir() else files)[str(path.relative_to(root))] = mode
    return files, folders


def test_uploads_and_job_outputs_are_640_in_750_folders(
    alice_api, media_root, tmp_path, fake_engine, django_capture_on_commit_callbacks
):
    series = factories.dicom_series(tmp_path / "src", slices=3)
    files = [SimpleUploadedFile(p.name, p.read_bytes()) for p in series]
    paths = [f"CT/sub/{p.name}" for p in series]
    response = alice_api.post("/api/scans/", {"files": files, "paths": paths}, format="multipart")
    assert response.status_code == 201, response.content
    nifti = SimpleUploadedFile("ct.nii.gz", factories.nifti_bytes())
    assert alice_api.post("/api/scans/", {"file": nifti}, format="multipart").status_code == 201
    with django_capture_on_commit_callbacks(execute=True):
        job = alice_api.post("/api/jobs/", {"scan": response.json()["id"], "model": "hn-oar"}, format="json")
    assert job.status_code == 201, job.content
    assert alice_api.get(f"/api/jobs/{job.json()['id']}/").json()["status"] == "succeeded"

    files_modes, folder_modes = modes_under(media_root / "scans")
    assert any("/original/CT/sub/" in name for name in files_modes)
    assert any("/jobs/" in name and name.endswith("labels.nii.gz") for name in files_modes)
    assert {name: oct(m) for name, m in files_modes.items() if m != 0o640} == {}
    assert {name: oct(m) for name, m in folder_modes.items() if m != 0o750} == {}


def test_sqlite_database_file_is_600(tmp_path):
    database = tmp_path / "db.sqlite3"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "webapp.settings",
        "DATABASE_URL": f"sqlite:///{database}",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.umask(0o022),  # a shell's usual umask
    )
    assert result.returncode == 0, result.stderr
    assert oct(stat.S_IMODE(database.stat().st_mode)) == oct(0o600)
