"""A pytest plugin for ``tests/test_web_without_torch.py``: at the end of the session it
fails the run if PyTorch or MONAI was imported, and shows where the first import came from."""

from __future__ import annotations

import importlib.abc
import sys
import traceback

import pytest

HEAVY = ("torch", "monai")
_first: list[str] = []


class _Watch(importlib.abc.MetaPathFinder):
    """Notes the stack of the first import of PyTorch or MONAI; finds nothing itself."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if not _first and name.split(".")[0] in HEAVY:
            _first.append("".join(traceback.format_stack(limit=40)))
        return None


sys.meta_path.insert(0, _Watch())


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    found = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
    if found:
        print(
            f"\nloaded in the web process: {', '.join(found[:3])}; first imported from:\n{_first[0]}", file=sys.stderr
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
