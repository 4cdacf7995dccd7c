"""The curve of a long run from its portable state: ``docs/training/NAME-curve.png``.

    python experiments/curve.py NAME

Reads the log kept in ``experiments/state/NAME.pt`` (so it works on any machine, with or
without the run's ``var/`` folder) and plots training loss against steps and validation
mean Dice against steps and hours of training (``engine.train.curve``); also prints the
validation table (hours, step, Dice per structure) for docs/training.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.train.curve import write_curve  # noqa: E402


def main(name: str) -> None:
    state = torch.load(ROOT / "experiments" / "state" / f"{name}.pt", weights_only=False)
    log = state["log"]
    path = write_curve(
        ROOT / "docs" / "training",
        f"{name}: validation Dice against hours",
        log,
        f"{name}-curve",
        html=False,
    )
    val = [r for r in log if "val" in r]
    names = list(val[-1]["val"]["per_structure"]) if val else []
    print(f"written {path.relative_to(ROOT)}; {state['step']} steps, {state['hours']:.2f} h")
    print("| hours | step | " + " | ".join(names) + " | mean |")
    print("|---" * (len(names) + 3) + "|")
    for r in val:
        per = r["val"]["per_structure"]
        cells = [f"{per[n]:.3f}" if n in per else "-" for n in names]
        print(f"| {r.get('hours', 0):.2f} | {r['step']} | " + " | ".join(cells) + f" | {r['val']['mean']:.3f} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
