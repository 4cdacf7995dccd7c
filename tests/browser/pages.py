"""Helpers of the browser tests: waiting for a page's state, screenshots (in
``test-output/``, git-ignored)."""

from __future__ import annotations

import time
from pathlib import Path

from tests.stack import REPO

OUTPUT = REPO / "test-output"


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def screenshot(driver, name: str) -> Path:
    OUTPUT.mkdir(exist_ok=True)
    path = OUTPUT / name
    driver.save_screenshot(str(path))
    return path
