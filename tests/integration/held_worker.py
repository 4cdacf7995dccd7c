"""``python -m celery`` with one addition, for the fault tests: a job can be held still
at a chosen stage, so that a test kills its worker or its broker at a known point.

While the file named by ``DELINEO_TEST_HOLD_FILE`` exists, a job that reports the stage
``DELINEO_TEST_HOLD_STAGE`` (default ``viewer``: the engine has written its outputs, the
viewer arrays, masks zip and checksums are not written yet) waits there; it goes on once
the file is removed. The stage is written to the job before it waits, so the test sees
it through the API. Everything else is the real worker, task and engine.

    python -m tests.integration.held_worker -A webapp worker ...
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import django


def hold_jobs(hold_file: Path, stage: str) -> None:
    from webapp.delineation import runner

    report = runner.ProgressRecorder.__call__

    def held(self: runner.ProgressRecorder, reached: str, percent: int) -> None:
        report(self, reached, percent)
        while reached == stage and hold_file.exists():
            time.sleep(0.1)

    runner.ProgressRecorder.__call__ = held


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    django.setup()
    hold_jobs(
        Path(os.environ["DELINEO_TEST_HOLD_FILE"]),
        os.environ.get("DELINEO_TEST_HOLD_STAGE", "viewer"),
    )
    from celery.bin.celery import main as celery_main

    sys.argv = ["celery", *sys.argv[1:]]
    sys.exit(celery_main())


if __name__ == "__main__":
    main()
