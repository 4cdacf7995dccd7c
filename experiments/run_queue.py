"""Writes and runs the config runs of the experiment drivers (recipe.py,
noisy_labels_2d.py): runs one after another, each in its own process, so one run's cases
leave memory before the next loads its own; finished runs are skipped, and a stopped run
ends the queue."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path


def write_configs(configs: dict[str, dict], folder: Path) -> list[Path]:
    """``folder/NAME.json`` for each configuration; returns the paths."""
    paths = []
    for name, config in configs.items():
        path = folder / f"{name}.json"
        path.write_text(json.dumps(config, indent=1) + "\n")
        paths.append(path)
    return paths


def run_in_order(
    names: Iterable[str],
    configs: Path,
    runs: Path,
    data: Path,
    root: Path,
    save_result: Callable[[str], Path],
) -> None:
    """``python -m engine train CONFIGS/NAME.json --no-state`` for each name without a
    ``RUNS/NAME/metrics.json``, then ``save_result(NAME)``.

    Exits with a message when a run fails; returns when one stops on a signal (the same
    call goes on from its saved state).
    """
    for name in names:
        if not (runs / name / "metrics.json").exists():
            command = [sys.executable, "-m", "engine", "train", str(configs / f"{name}.json")]
            command += ["--data", str(data), "--experiments", str(runs), "--no-state"]
            if subprocess.run(command, cwd=root).returncode != 0:
                sys.exit(f"{name} failed")
            if not (runs / name / "metrics.json").exists():
                return
        save_result(name)
