"""The curve of a long run from its portable state: ``docs/training/NAME-curve.png``.

    python experiments/curve.py NAME
    python experiments/curve.py NAME NEXT STEP   # NEXT went on from NAME's step-STEP network: one curve of both

Reads the log kept in ``experiments/state/NAME.pt`` (so it works on any machine, with or
without the run's ``var/`` folder) and plots training loss against steps and validation
mean Dice against steps and hours of training (``engine.train.curve``); also prints the
validation table (hours, step, Dice per structure) for docs/training.md. With two runs,
where NEXT started from NAME's network of step STEP,
``docs/training/NAME-NEXT-curve.png`` plots the network's whole history:
validation mean Dice and organ mean against hours of training added up over both runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.train.curve import write_curve  # noqa: E402


def _state(name: str) -> dict:
    return torch.load(ROOT / "experiments" / "state" / f"{name}.pt", weights_only=False)


def _organ_mean(val: dict) -> float:
    organs = [d for n, d in val["per_structure"].items() if not n.startswith("PTV")]
    return sum(organs) / len(organs)


def history(first: str, then: str, start_step: int) -> Path:
    """One curve of a network trained by ``first`` and then by ``then`` from ``first``'s
    step ``start_step``: validation Dice against hours added up over both."""
    import plotly.graph_objects as go

    head = [r for r in _state(first)["log"] if "val" in r and "hours" in r and r["step"] <= start_step]
    offset = head[-1]["hours"]
    tail = [r | {"hours": offset + r["hours"]} for r in _state(then)["log"] if "val" in r and "hours" in r]
    fig = go.Figure()
    for run, points in ((first, head), (then, tail)):
        hours = [r["hours"] for r in points]
        fig.add_trace(
            go.Scatter(
                x=hours, y=[r["val"]["mean"] for r in points], name=f"{run}: mean, 10 structures", mode="lines+markers"
            )
        )
        fig.add_trace(
            go.Scatter(
                x=hours, y=[_organ_mean(r["val"]) for r in points], name=f"{run}: organ mean", mode="lines+markers"
            )
        )
    fig.add_hline(y=0.80, line_dash="dot", annotation_text="target: organ mean 0.80 (test split)")
    fig.update_layout(
        title=f"{first} then {then}: validation Dice against hours of training ({tail[-1]['hours']:.1f} h in all)",
        xaxis_title="hours of training (2 CPU cores)",
        yaxis_title="val Dice",
        width=1100,
        height=450,
    )
    path = ROOT / "docs" / "training" / f"{first}-{then}-curve.png"
    fig.write_image(path, width=1100, height=450)
    return path


def main(name: str) -> None:
    state = _state(name)
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
    if len(sys.argv) == 2:
        main(sys.argv[1])
    elif len(sys.argv) == 4:
        print(f"written {history(sys.argv[1], sys.argv[2], int(sys.argv[3])).relative_to(ROOT)}")
    else:
        sys.exit(__doc__)
