"""A pytest plugin for ``tests/test_web_without_torch.py``: at the end of the session it
fails the run if PyTorch or MONAI was imported, naming who loaded it."""

from __future__ import annotations

import sys

import pytest

HEAVY = ("torch", "monai")


def loaded() -> list[str]:
    return sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    found = loaded()
    if found:
        print(f"\nloaded in the web process: {', '.join(found[:5])}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
