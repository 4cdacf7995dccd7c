"""The 2D Pick-and-Learn experiment (docs/noisy-labels.md): configs, runs, table.

    python experiments/noisy_labels_2d.py configs          # writes experiments/configs/nl2d-*.json
    python experiments/noisy_labels_2d.py run [NAME ...]   # runs them in order (resumable; done runs skipped)
    python experiments/noisy_labels_2d.py table            # the Markdown tables (pixels, then mm) from experiments/results

Every run is ``python -m engine train experiments/configs/NAME.json --no-state`` (a
``"kind": "slices2d"`` run, ``engine.train.pick_and_learn_2d``): axial slices of the
OpenKBP CTs, 128 x 128, of the patients with all four structures contoured; batches of
16 images; noise on a fraction of the training images, its radii in pixels as in the
thesis (``nl2d-p*``) or in mm on each case's pixel spacing (``nl2d-mm-p*``). Each finished run is
summarised into ``experiments/results/NAME.json`` (committed: var/ is not).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = ROOT / "experiments" / "configs"
RUNS = ROOT / "var" / "experiments"
RESULTS = ROOT / "experiments" / "results"
DATA = ROOT.parent / "shared" / "data" / "openkbp"

# Contoured consistently (clear bone or gland borders), in 72 of the 120 training patients
# all four together, left and right: the closest OpenKBP comes to the thesis's lung, heart
# and clavicle masks. The spinal cord, oesophagus and larynx are thin or often missing;
# PTVs follow intent more than image.
NAMES = ["Brainstem", "Parotid_R", "Parotid_L", "Mandible"]
MODEL = {
    "architecture": "ResSEUNet",
    "channels": [16, 32, 64, 96, 128],
    "residual": True,
    "se": True,
    "window_hu": [-1000.0, 1500.0],
    "threshold": 0.5,
}
TRAINING = {
    "steps": 1000,
    "batch": 16,
    "lr": 2e-3,
    "val_every": 250,
    "seed": 0,
    "threads": 2,
}
METHODS = {
    "plain": None,
    "qam": {"lambda": None, "lr": 1e-3},
    "qam+ocm": {"lambda": 2.0, "lr": 1e-3},
}
FRACTIONS = (0.25, 0.5, 0.75)
RANGES = ("small", "large")
LAMBDAS = (0.5, 1.0, 3.0)  # 2.0 is the qam+ocm row
# The thesis's figures (2D chest radiographs, JSRT; mean Dice over lung, heart, clavicle).
THESIS = {"clean": 0.915, "75 % plain": "0.621-0.720", "75 % qam+ocm": "0.892-0.895"}


def _structures() -> list[dict]:
    from engine.models.registry import model_config

    return [s for s in model_config("hn-oar")["structures"] if s["name"] in NAMES]


# Radii in the thesis's pixels, or in mm on each case's pixel spacing (the 3D protocol's
# ranges): on 128^2 OpenKBP slices the pixel ranges erase most organs (docs/noisy-labels.md).
UNITS = ("px", "mm")


def name_of(fraction: float, range_: str, method: str, lam: float | None = None, units: str = "px") -> str:
    if fraction == 0:
        return "nl2d-p0-plain"
    suffix = f"-lambda{lam}" if lam is not None else ""
    prefix = "nl2d-mm-" if units == "mm" else "nl2d-"
    return f"{prefix}p{round(fraction * 100)}-{range_}-{method}{suffix}"


def all_configs() -> dict[str, dict]:
    structures = _structures()
    configs = {}

    def add(name: str, noise: dict | None, qam: dict | None) -> None:
        config = {
            "name": name,
            "kind": "slices2d",
            "model": MODEL | {"name": name, "structures": structures},
            "training": dict(TRAINING),
        }
        if noise:
            config["noise"] = noise
        if qam:
            config["qam"] = qam
        configs[name] = config

    add(name_of(0, "", "plain"), None, None)
    # The most telling contrast (75 % large) first, so a partial sweep says most; mm before
    # pixels, whose 75 % runs are made and showed the organs erased.
    for units in reversed(UNITS):
        for range_ in reversed(RANGES):
            for fraction in reversed(FRACTIONS):
                for method, qam in METHODS.items():
                    noise = {"fraction": fraction, "range": range_, "seed": 0, "units": units}
                    add(name_of(fraction, range_, method, units=units), noise, qam and dict(qam))
        for lam in LAMBDAS:
            add(
                name_of(0.75, "large", "qam+ocm", lam, units),
                {"fraction": 0.75, "range": "large", "seed": 0, "units": units},
                {"lambda": lam, "lr": 1e-3},
            )
    return configs


def write_configs() -> list[Path]:
    from experiments.run_queue import write_configs as write

    return write(all_configs(), CONFIGS)


def _weights(name: str) -> list[float] | None:
    """Mean weight (relative to uniform) of clean and of corrupted images over the last
    third of training."""
    records = [json.loads(line) for line in (RUNS / name / "log.jsonl").read_text().splitlines()]
    rows = [r for r in records if r.get("weight_clean") is not None and r.get("weight_corrupted") is not None]
    rows = rows[len(rows) * 2 // 3 :]
    if not rows:
        return None
    return [round(sum(r[k] for r in rows) / len(rows), 4) for k in ("weight_clean", "weight_corrupted")]


def save_result(name: str) -> Path:
    metrics = json.loads((RUNS / name / "metrics.json").read_text())
    evaluation = metrics["evaluation"]
    result = {
        "name": name,
        "command": f"python -m engine train experiments/configs/{name}.json --no-state",
        "seed": metrics["seed"],
        "best_val_mean_dice": metrics["best_val_mean_dice"],
        "test_n_cases": evaluation["n_cases"],
        "test_dice": {k: v["dice_mean"] for k, v in evaluation["per_structure"].items()},
        "test_mean_dice": evaluation["mean_dice"],
        "weight_clean_corrupted": _weights(name),
        "hours": metrics["hours"],
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def run_all(names: list[str]) -> None:
    from experiments.run_queue import run_in_order

    # A committed result is a finished run, even on a machine whose var/ does not hold it.
    todo = [n for n in names or list(all_configs()) if names or not (RESULTS / f"{n}.json").exists()]
    run_in_order(todo, CONFIGS, RUNS, DATA, ROOT, save_result)


def _row(label: str, name: str) -> str:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return f"| {label} | " + " | ".join(["not run yet"] * (len(NAMES) + 2)) + " |"
    r = json.loads(path.read_text())
    cells = [f"{r['test_dice'][n]:.3f}" for n in NAMES] + [f"**{r['test_mean_dice']:.3f}**"]
    w = r["weight_clean_corrupted"]
    cells.append(f"{w[0]:.2f} / {w[1]:.2f}" if w else "-")
    return f"| {label} | " + " | ".join(cells) + " |"


def table(units: str = "px") -> str:
    """The table of one noise unit: pixels (the thesis's 1-8 / 5-13 px) or mm (2-8 / 5-13 mm)."""
    head = "| run | " + " | ".join(NAMES) + " | mean | weight clean / corrupted |"
    lines = [head, "|" + "---|" * (len(NAMES) + 3), _row("0 % noise, plain", name_of(0, "", "plain"))]
    for range_ in RANGES:
        for fraction in FRACTIONS:
            for method in METHODS:
                label = f"{round(fraction * 100)} % {range_} ({units}), {method}"
                lines.append(_row(label, name_of(fraction, range_, method, units=units)))
    lines += [
        "",
        f"| lambda (75 % large ({units}), qam+ocm) | " + " | ".join(NAMES) + " | mean | weight clean / corrupted |",
    ]
    lines.append("|" + "---|" * (len(NAMES) + 3))
    for lam in (*LAMBDAS[:2], 2.0, LAMBDAS[2]):
        name = name_of(0.75, "large", "qam+ocm", None if lam == 2.0 else lam, units)
        lines.append(_row(f"{lam}", name))
    return "\n".join(lines)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "table"
    if command == "configs":
        print("\n".join(str(p) for p in write_configs()))
    elif command == "run":
        run_all(sys.argv[2:])
    elif command == "table":
        print("\n\n".join(table(units) for units in UNITS))
    else:
        sys.exit(__doc__)
