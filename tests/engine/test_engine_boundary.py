"""The engine never imports Django: a physicist can use it alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_engine_imports_no_django():
    modules = [
        f"engine.{'.'.join(p.relative_to(ROOT / 'engine').with_suffix('').parts)}"
        for p in (ROOT / "engine").rglob("*.py")
        if p.name not in {"__init__.py", "__main__.py"}
    ]
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + (
            "bad = sorted(m for m in sys.modules if m == 'django' or m.startswith(('django.', 'webapp', 'rest_framework')))\n"
            "print(bad)\nsys.exit(1 if bad else 0)\n"
        )
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert len(modules) > 10
    assert result.returncode == 0, result.stdout + result.stderr
