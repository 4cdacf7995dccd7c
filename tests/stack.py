"""A running Delineo stack for the slow tests: the web server (gunicorn, as `make run`
starts it) and a Celery worker as
subprocesses sharing one database, one broker and one MEDIA_ROOT, as in production.

Not pytest-django's test database: the worker is another process, so both must see the
same committed data. Each stack gets its own database (a fresh PostgreSQL database or a
SQLite file), its own queue name and its own MEDIA_ROOT, and removes them afterwards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import urllib3

REPO = Path(__file__).resolve().parent.parent
DATA = (REPO / ".." / "shared" / "data").resolve()
POSTGRES_ADMIN_URL = os.environ.get("DELINEO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("DELINEO_TEST_REDIS", "redis://127.0.0.1:6379/0")


def require(condition: bool, what: str) -> None:
    """Skip when a prerequisite is missing; under CI (CI=true) fail instead."""
    if condition:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} (CI=true: missing prerequisites fail instead of skipping)")
    pytest.skip(what)


def engine_cli(*args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m engine ARGS`` from the repository root, output captured as text;
    ``env``: variables added to this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=REPO,
        env={**os.environ, **env} if env else None,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def data_dir(*parts: str) -> Path:
    path = DATA.joinpath(*parts)
    require(
        path.exists(),
        f"test data not found at {path} (expected ../shared/data next to the repository)",
    )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


class PostgresDatabase:
    """A throw-away PostgreSQL database."""

    def __init__(self) -> None:
        import psycopg

        self._psycopg = psycopg
        self.name = f"delineo_test_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{self.name}"

    def drop(self) -> None:
        with self._psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class Stack:
    """Web server and worker subprocesses with the given database and broker URLs."""

    def __init__(
        self,
        root: Path,
        database_url: str,
        broker_url: str,
        env: dict[str, str] | None = None,
        worker_command: list[str] | None = None,
    ) -> None:
        """``env``: more environment variables for every process; ``worker_command``: the
        worker's program instead of ``python -m celery`` (it gets the same arguments)."""
        self.root = root
        self.worker_command = worker_command or [sys.executable, "-m", "celery"]
        self.queue = f"delineo-test-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_", "DATABASE_URL"))},
            "DJANGO_SETTINGS_MODULE": "webapp.settings",
            "DEBUG": "true",
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": broker_url,
            "CELERY_TASK_DEFAULT_QUEUE": self.queue,
            "MEDIA_ROOT": str(root / "media"),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=300))

    # --- processes -------------------------------------------------------------------
    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def _spawn(self, name: str, command: list[str]) -> None:
        log = self.root / f"{name}.log"
        self.logs[name] = log
        self.processes[name] = subprocess.Popen(
            command,
            cwd=REPO,
            env=self.env,
            stdout=open(log, "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start(self, workers: int = 1) -> Stack:
        """Migrate, then start the web server and ``workers`` workers (``worker``,
        ``worker-2``, ...); returns when all answer."""
        self.manage("migrate", "--noinput")
        # The web server as `make run` starts it (Makefile, webapp/gunicorn.conf.py).
        self._spawn(
            "web",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "webapp/gunicorn.conf.py",
                "-b",
                f"127.0.0.1:{self.port}",
            ],
        )
        names = ["worker"] + [f"worker-{n}" for n in range(2, workers + 1)]
        for name in names:
            self.start_worker(name, wait=False)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                assert process.poll() is None, f"{name} exited early:\n{self.log_tail(name)}"
            try:
                if self.http.request("GET", f"{self.base_url}/accounts/login/").status == 200:
                    break
            except urllib3.exceptions.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError(f"web server did not start:\n{self.log_tail('web')}")
        for name in names:
            self.wait_for_worker(name)
        return self

    def start_worker(self, name: str = "worker", wait: bool = True) -> None:
        """Start a Celery worker (one process in its pool) named ``name``; its log is
        ``<name>.log`` (a restarted worker's log is started afresh)."""
        self._spawn(
            name,
            [
                *self.worker_command,
                "-A",
                "webapp",
                "worker",
                "-c",
                "1",
                "-l",
                "info",
                "-n",
                f"{name}-{self.queue}@%h",
                "--without-gossip",
                "--without-mingle",
            ],
        )
        if wait:
            self.wait_for_worker(name)

    def wait_for_worker(self, name: str = "worker") -> None:
        deadline = time.monotonic() + 180
        while b"ready." not in self.logs[name].read_bytes():
            assert self.processes[name].poll() is None, f"{name} exited:\n{self.log_tail(name)}"
            assert time.monotonic() < deadline, f"{name} not ready:\n{self.log_tail(name)}"
            time.sleep(0.5)

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` to the process group of ``name`` (a worker: its main process and
        its pool) and wait for the main process to end."""
        process = self.processes[name]
        os.killpg(process.pid, sig)
        process.wait(timeout=60)

    def worker_alive(self) -> bool:
        return any(process.poll() is None for name, process in self.processes.items() if name.startswith("worker"))

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logs.get(name)
        if not path or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # --- accounts and API ------------------------------------------------------------
    def create_account(self) -> tuple[str, str]:
        output = self.manage("ensure_local_account")
        username = re.search(r"username: (\S+)", output).group(1)
        password = re.search(r"password: (\S+)", output).group(1)
        return username, password

    def token(self, username: str, password: str) -> str:
        response = self.http.request(
            "POST",
            f"{self.base_url}/api/auth/token/",
            fields={"username": username, "password": password},
        )
        assert response.status == 200, response.data
        return json.loads(response.data)["token"]

    def api(self, method: str, path: str, token: str, **kwargs) -> urllib3.BaseHTTPResponse:
        headers = {"Authorization": f"Token {token}", **kwargs.pop("headers", {})}
        return self.http.request(method, f"{self.base_url}{path}", headers=headers, **kwargs)

    def upload_zip(self, token: str, archive: Path) -> dict:
        """POST a zip to /api/scans/; returns the created scan."""
        response = self.api(
            "POST",
            "/api/scans/",
            token,
            fields={"file": (archive.name, archive.read_bytes(), "application/zip")},
        )
        assert response.status == 201, response.data
        return json.loads(response.data)

    def create_job(self, token: str, scan_id: str, model: str = "hn-oar") -> str:
        """POST /api/jobs/ for ``scan_id``; returns the job id."""
        response = self.api(
            "POST",
            "/api/jobs/",
            token,
            body=json.dumps({"scan": scan_id, "model": model}),
            headers={"Content-Type": "application/json"},
        )
        assert response.status == 201, response.data
        return json.loads(response.data)["id"]

    def wait_for_job(self, job_id: str, token: str, timeout_s: float = 600) -> dict:
        deadline = time.monotonic() + timeout_s
        seen = []
        while True:
            job = json.loads(self.api("GET", f"/api/jobs/{job_id}/", token).data)
            seen.append((job["status"], job["stage"], job["progress"]))
            if job["status"] in ("succeeded", "failed"):
                job["_seen"] = seen
                return job
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id} not finished after {timeout_s} s (last: {seen[-1]}):\n{self.log_tail('worker')}"
                )
            assert self.worker_alive(), f"no worker is running:\n{self.log_tail('worker')}"
            time.sleep(1)


def zip_folder(folder: Path, target: Path) -> Path:
    """Zip ``folder`` (keeping its name as the top-level folder inside the zip)."""
    return Path(
        shutil.make_archive(
            str(target.with_suffix("")),
            "zip",
            root_dir=folder.parent,
            base_dir=folder.name,
        )
    )
