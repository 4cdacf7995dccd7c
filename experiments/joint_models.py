"""Results of the joint registration + segmentation runs (issue 5).

    python -m engine train experiments/configs/joint-NAME.json   # one run, resumable
    python experiments/joint_models.py collect   # var/experiments/joint-*/metrics.json -> experiments/results
    python experiments/joint_models.py table     # the Markdown table from experiments/results

Each ``experiments/results/joint-NAME.json`` (committed: var/ is not) holds the command,
the run's headline figures and its full test-pair evaluation
(``engine.train.joint.evaluate_pairs``: working-grid Dice, HD95 and MSD of the propagated
contours, the same before registration, the direct segmentation, DVF error on synthetic
pairs, folding, seconds per pair).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
RUNS = ROOT / "var" / "experiments"


def collect() -> list[Path]:
    """Write experiments/results/joint-NAME.json for every finished joint run."""
    written = []
    for metrics_path in sorted(RUNS.glob("joint-*/metrics.json")):
        metrics = json.loads(metrics_path.read_text())
        name = metrics["name"]
        result = {
            "name": name,
            "command": f"python -m engine train experiments/configs/{name}.json",
            **{k: v for k, v in metrics.items() if k != "name"},
        }
        path = RESULTS / f"{name}.json"
        path.write_text(json.dumps(result, indent=1) + "\n")
        written.append(path)
    return written


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mean(per_structure: dict, key: str) -> float | None:
    values = [s[key] for s in per_structure.values() if s.get(key) is not None]
    return sum(values) / len(values) if values else None


def table() -> str:
    """One row per joint run: test-pair figures on the working grid."""
    rows = [
        (
            "| run | steps | labelled train cases | Dice propagated | Dice before | Dice direct | "
            "HD95 (mm) | MSD (mm) | DVF error (mm), synthetic | folding % | s / pair |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(RESULTS.glob("joint-*.json")):
        r = json.loads(path.read_text())
        e = r["evaluation_test"]
        per = e["propagated"]["per_structure"]
        rows.append(
            f"| {r['name']} | {r['steps']} | {r['labelled_train_cases']} | "
            f"{_fmt(e['propagated']['mean_dice'])} | {_fmt(e['identity']['mean_dice'])} | "
            f"{_fmt((e.get('direct') or {}).get('mean_dice'))} | {_fmt(_mean(per, 'hd95_mm'), 1)} | "
            f"{_fmt(_mean(per, 'msd_mm'), 1)} | {_fmt(e['dvf_error_mm'], 2)} "
            f"(before {_fmt(e['dvf_error_before_mm'], 2)}) | {_fmt(e['folding_percent'], 3)} | "
            f"{_fmt(e['seconds_per_pair'], 2)} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "table"
    if command == "collect":
        for p in collect():
            print(f"written {p.relative_to(ROOT)}")
    elif command == "table":
        print(table())
    else:
        sys.exit(f"usage: {sys.argv[0]} collect | table")
