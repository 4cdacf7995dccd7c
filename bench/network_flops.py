"""The segmentation network against this CPU's compute bound: FLOPs per sliding window
(PyTorch's ``FlopCounterMode``) over the measured time of one window, next to the
float32 rate the CPU reaches on a large matrix product (its attainable peak).

For each shipped segmentation model: the windows the sliding window runs on the model
grid of a CT (``--grid``, default that of ``bench/fullres.py``'s 512 x 512 x 192 CT
for the hn models: 144 x 144 x 154 at 3.5 x 3.5 x 2.5 mm), the FLOPs of one window,
and the seconds of one window under ``torch.no_grad`` (as ``engine segment`` ran it
before) and ``torch.inference_mode``, each the median of ``--repeats`` after a warm-up,
with ``--threads`` threads.

    .venv/bin/python bench/network_flops.py [--threads 2] [--repeats 3]

Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from monai.inferers import sliding_window_inference
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.models.registry import available_models, load_model  # noqa: E402

OVERLAP = 0.25  # engine.infer.predict's


def windows(grid: tuple[int, ...], roi: tuple[int, ...]) -> int:
    """Windows MONAI's sliding window runs on ``grid`` (padded to ``roi`` where smaller),
    counted by running it with a predictor that returns its window."""
    count = 0

    def predictor(window: torch.Tensor) -> torch.Tensor:
        nonlocal count
        count += window.shape[0]
        return window

    sliding_window_inference(torch.zeros(1, 1, *grid), roi, 1, predictor, overlap=OVERLAP, mode="gaussian")
    return count


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up: oneDNN picks its kernels on the first call
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(repeats: int, n: int = 4096) -> float:
    """float32 GFLOP/s of an n x n matrix product: the attainable compute bound."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_seconds(lambda: a @ b, repeats) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grid", type=int, nargs=3, default=(144, 144, 154))
    parser.add_argument("--models", nargs="*", default=available_models())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    peak = matmul_gflops(args.repeats)
    print(f"{args.threads} threads; 4096 x 4096 float32 matrix product: {peak:.0f} GFLOP/s\n")
    print(
        "| model | window | windows on the grid | GFLOP per window | first window | "
        "no_grad | inference_mode | GFLOP/s (inference_mode) | of the matrix-product "
        "rate | bfloat16 autocast |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    for name in args.models:
        model = load_model(name)
        roi = tuple(model.config["roi_size"])
        network = model.network.eval()
        x = torch.rand(1, 1, *roi)
        start = time.perf_counter()
        with torch.no_grad():
            network(x)
        t_first = time.perf_counter() - start
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            network(x)
        gflop = counter.get_total_flops() / 1e9

        def with_no_grad(network=network, x=x):
            with torch.no_grad():
                network(x)

        def with_inference_mode(network=network, x=x):
            with torch.inference_mode():
                network(x)

        def with_bfloat16(network=network, x=x):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                network(x)

        t_grad = median_seconds(with_no_grad, args.repeats)
        t_inference = median_seconds(with_inference_mode, args.repeats)
        t_bf16 = median_seconds(with_bfloat16, args.repeats)
        rate = gflop / t_inference
        print(
            f"| {name} | {'x'.join(map(str, roi))} | {windows(tuple(args.grid), roi)} | "
            f"{gflop:.0f} | {t_first:.2f} s | {t_grad:.2f} s | {t_inference:.2f} s | "
            f"{rate:.0f} | {100 * rate / peak:.0f} % | {t_bf16:.2f} s |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
