"""The web process never loads PyTorch or MONAI: every page and API endpoint, with every
method, for the owner, a team member and a stranger on a delineation, a contour audit and
a propagation (the persona matrix of ``test_personas``), and the pages (``test_pages``),
run in a fresh interpreter that fails if either was imported (``tests/torch_guard.py``). Engine work runs in the worker; the
exports it writes after a job are only queued here (their tasks are not run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEB_TESTS = ("tests/test_personas.py", "tests/test_pages.py")


def test_pages_and_api_never_load_torch_or_monai():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "tests.torch_guard", "-p", "no:cacheprovider", *WEB_TESTS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        check=False,
    )
    assert result.returncode == 0, (result.stdout[-4000:], result.stderr[-2000:])


def test_only_the_engine_client_imports_the_engine():
    import ast

    importers = set()
    for path in (ROOT / "webapp").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            if any(n == "engine" or n.startswith("engine.") for n in names):
                importers.add(path.relative_to(ROOT).as_posix())
    assert importers == {"webapp/delineation/engine_client.py"}
