"""Seconds per training step of the Res-UNet + SE on random data, per configuration.

One step = forward, Dice + BCE loss over 10 structures, backward, SGD update, on a batch
of 2 patches (1 of 128^3); the first step is a warm-up and not counted. Compares float32 with
bfloat16 autocast on the CPU (issue 13: use it only if it is faster), the
full-resolution first level and patch sizes. Run it on an otherwise idle machine:

    .venv/bin/python bench/train_step.py [--steps 3] [--threads 2] [--hn] [--bfloat16-only]

Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.hardware import cpu_has_native_bfloat16  # noqa: E402
from engine.models.res_se_unet import ResSEUNet  # noqa: E402
from engine.train.segmentation import deep_supervision_loss  # noqa: E402

CHANNELS = (16, 32, 64, 96, 128)
SLIM = (16, 32, 48, 64, 96)  # experiments/configs/hn.json
HN = "hn's network (slim, full-resolution level, deep supervision)"
NETWORKS = [  # (label, channels, full_resolution_channels + deep supervision, patch, batch)
    ("hn-oar's network", CHANNELS, 0, 96, 2),
    ("hn-oar's network", CHANNELS, 0, 80, 2),
    ("full-resolution level (8) + deep supervision", CHANNELS, 8, 80, 2),
    ("full-resolution level (8) + deep supervision", CHANNELS, 8, 96, 2),
    (HN, SLIM, 8, 80, 2),
    (HN, SLIM, 8, 128, 1),  # experiments/design.py, "whole-volume"
]


def seconds_per_step(channels: tuple, full: int, patch: int, autocast: str | None, steps: int, batch: int = 2) -> float:
    torch.manual_seed(0)
    net = ResSEUNet(1, 10, channels=channels, full_resolution_channels=full, deep_supervision=bool(full))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    x = torch.rand(batch, 1, patch, patch, patch)
    y = (torch.rand(batch, 10, patch, patch, patch) > 0.9).float()
    available = torch.ones(batch, 10, dtype=torch.bool)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast == "bfloat16"):
            outputs = net(x)
        loss = deep_supervision_loss(outputs, y, available).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
    return sum(times) / len(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hn", action="store_true", help="only hn's network (both patch sizes)")
    parser.add_argument("--bfloat16-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads, native bfloat16: {cpu_has_native_bfloat16()}"
    )
    print("| network | patches | float32 s/step | bfloat16 autocast s/step |")
    print("|---|---|---|---|")
    for label, channels, full, patch, batch in NETWORKS:
        if args.hn and label != HN:
            continue
        bf16 = seconds_per_step(channels, full, patch, "bfloat16", args.steps, batch)
        fp32 = "" if args.bfloat16_only else f"{seconds_per_step(channels, full, patch, None, args.steps, batch):.2f}"
        print(f"| {label} | {batch} x {patch}^3 | {fp32} | {bf16:.2f} |", flush=True)


if __name__ == "__main__":
    main()
