"""Seconds per training step of hn's network when another process shares the 2 cores,
with OpenMP's default (spinning) wait policy against OMP_WAIT_POLICY=PASSIVE.

A long run trains in the background while tests and other runs come and go; this
measures what that costs and whether passive OpenMP waits help (docs/training.md,
"Sharing the CPU"). Each shared case starts a competing process (the same step in a loop,
2 threads, as a second training run would be), then times the measured process's steps;
the policy is set in both processes' environment:

    .venv/bin/python bench/shared_cpu.py [--steps 3] [--patch 64]

Prints a Markdown table for docs/benchmarks.md ("Sharing the CPU").
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STEP = """
import sys, time, torch
sys.path.insert(0, {root!r})
from bench.train_step import SLIM, seconds_per_step
torch.set_num_threads(2)
steps, patch = int(sys.argv[1]), int(sys.argv[2])
if steps == 0:
    while True:
        seconds_per_step(SLIM, 8, patch, None, 1)
print(seconds_per_step(SLIM, 8, patch, None, steps))
"""


def timed(policy: str | None, competitor: bool, steps: int, patch: int) -> float:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    code = STEP.format(root=str(ROOT))
    other = None
    if competitor:
        other = subprocess.Popen([sys.executable, "-c", code, "0", str(patch)], env=env)
        time.sleep(5)  # past its start-up, into its steps
    try:
        out = subprocess.run(
            [sys.executable, "-c", code, str(steps), str(patch)], env=env, check=True, capture_output=True, text=True
        )
    finally:
        if other is not None:
            other.kill()
            other.wait()
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--patch", type=int, default=64)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; patch {args.patch}^3, 2 threads")
    print("| wait policy | alone (s/step) | beside a second run (s/step) |")
    print("|---|---|---|")
    for policy in (None, "PASSIVE"):
        alone = timed(policy, False, args.steps, args.patch)
        shared = timed(policy, True, args.steps, args.patch)
        print(f"| {policy or 'default (spin)'} | {alone:.2f} | {shared:.2f} |")


if __name__ == "__main__":
    main()
