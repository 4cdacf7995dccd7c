"""The noisy-label experiments of docs/noisy-labels.md: write the run configs, run them, make the tables.

    python experiments/noisy_labels.py configs            # writes experiments/configs/*.json
    python experiments/noisy_labels.py run [NAME ...]     # runs them in order (resumable; done runs skipped)
    python experiments/noisy_labels.py table              # prints the Markdown tables from experiments/results
    python experiments/noisy_labels.py docs               # writes them into docs/noisy-labels.md

Every run is ``python -m engine train experiments/configs/NAME.json``; its figures are the
test-split Dice in ``var/experiments/NAME/metrics.json``, summarised when the run ends into
``experiments/results/NAME.json`` (committed: var/ is not), from which the tables are made.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = ROOT / "experiments" / "configs"
RUNS = ROOT / "var" / "experiments"
RESULTS = ROOT / "experiments" / "results"
DATA = ROOT.parent / "shared" / "data" / "openkbp"

# Sized for 2 CPU cores (docs/noisy-labels.md says so): a 5 mm grid, 48^3 patches,
# 1000 steps of 4 patches, on all 120 training cases.
STRUCTURES = [
    {
        "label": 1,
        "name": "PTV70",
        "source": "PTV70",
        "color": [255, 0, 0],
        "type": "PTV",
    },
    {
        "label": 2,
        "name": "Parotid_R",
        "source": "RightParotid",
        "color": [0, 170, 255],
        "type": "ORGAN",
    },
    {
        "label": 3,
        "name": "Parotid_L",
        "source": "LeftParotid",
        "color": [0, 255, 128],
        "type": "ORGAN",
    },
    {
        "label": 4,
        "name": "Mandible",
        "source": "Mandible",
        "color": [230, 230, 230],
        "type": "ORGAN",
    },
]
MODEL = {
    "architecture": "ResSEUNet",
    "channels": [16, 32, 64, 96, 128],
    "residual": True,
    "se": True,
    "spacing_mm": [5.0, 5.0, 5.0],
    "axcodes": "RAS",
    "window_hu": [-1000.0, 1500.0],
    "roi_size": [96, 96, 64],
    "threshold": 0.5,
    "structures": STRUCTURES,
}
TRAINING = {
    "steps": 1000,
    "patch": 48,
    "batch": 4,
    "lr": 2e-3,
    "val_every": 250,
    "seed": 0,
}
METHODS = {
    "plain": None,
    "qam": {"lambda": None, "lr": 1e-3},
    "qam+ocm": {"lambda": 2.0, "lr": 1e-3},
}
FRACTIONS = (0.25, 0.5, 0.75)
RANGES = ("small", "large")
ABLATION = {  # the thesis's ablation, on clean labels
    "unet": {"residual": False, "se": False, "schedule": "onecycle", "loss": "ce"},
    "res-unet": {"residual": True, "se": False, "schedule": "onecycle", "loss": "ce"},
    "+se": {"residual": True, "se": True, "schedule": "onecycle", "loss": "ce"},
    "+cycle": {"residual": True, "se": True, "schedule": "cyclic", "loss": "ce"},
    "+dice": {"residual": True, "se": True, "schedule": "cyclic", "loss": "dice+ce"},
}


def noisy_name(fraction: float, range_: str, method: str) -> str:
    return "nl-p0-plain" if fraction == 0 else f"nl-p{round(fraction * 100)}-{range_}-{method}"


def all_configs() -> dict[str, dict]:
    configs = {}

    def add(name: str, model: dict, training: dict, noise: dict | None, qam: dict | None) -> None:
        config = {"name": name, "model": model, "training": training}
        if noise:
            config["noise"] = noise
        if qam:
            config["qam"] = qam
        configs[name] = config

    add(noisy_name(0, "", "plain"), MODEL, TRAINING, None, None)
    # Order: the most telling contrast (75 % large noise) first, so a partial sweep says most.
    for range_ in reversed(RANGES):
        for fraction in reversed(FRACTIONS):
            for method, qam in METHODS.items():
                noise = {"fraction": fraction, "range": range_, "seed": 0}
                add(
                    noisy_name(fraction, range_, method),
                    MODEL,
                    TRAINING,
                    noise,
                    copy.deepcopy(qam),
                )
    for lam in (0.5, 1.0, 3.0):
        add(
            f"nl-p75-large-qam+ocm-lambda{lam}",
            MODEL,
            TRAINING,
            {"fraction": 0.75, "range": "large", "seed": 0},
            {"lambda": lam, "lr": 1e-3},
        )
    for name, opts in ABLATION.items():
        model = MODEL | {"residual": opts["residual"], "se": opts["se"]}
        add(
            f"ablation-{name}",
            model,
            TRAINING | {"schedule": opts["schedule"], "loss": opts["loss"]},
            None,
            None,
        )
    return configs


def write_configs() -> list[Path]:
    CONFIGS.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, config in all_configs().items():
        path = CONFIGS / f"{name}.json"
        path.write_text(json.dumps(config, indent=1) + "\n")
        paths.append(path)
    return paths


def run_all(names: list[str]) -> None:
    from engine.train.experiment import run

    for name in names or list(all_configs()):
        if (RUNS / name / "metrics.json").exists():
            print(f"{name}: done", flush=True)
        else:
            metrics = run(CONFIGS / f"{name}.json", DATA, RUNS)
            if metrics is None:  # stopped by a signal: resume with the same command
                return
            print(
                f"{name}: test mean Dice {metrics['evaluation']['mean_dice']}",
                flush=True,
            )
        save_result(name)


def _weights(name: str) -> list[float] | None:
    """Mean QAM weight (relative to uniform) of clean and of corrupted samples over the last
    third of training."""
    records = [json.loads(line) for line in (RUNS / name / "log.jsonl").read_text().splitlines()]
    rows = [r for r in records if r.get("weight_clean") is not None and r.get("weight_corrupted") is not None]
    rows = rows[len(rows) * 2 // 3 :]
    if not rows:
        return None
    return [round(sum(r[k] for r in rows) / len(rows), 4) for k in ("weight_clean", "weight_corrupted")]


def save_result(name: str) -> Path:
    """Summarise a finished run (var/experiments/NAME) into experiments/results/NAME.json."""
    metrics = json.loads((RUNS / name / "metrics.json").read_text())
    evaluation = metrics["evaluation"]
    result = {
        "name": name,
        "command": f"python -m engine train experiments/configs/{name}.json",
        "seed": metrics["seed"],
        "best_val_mean_dice": metrics["best_val_mean_dice"],
        "test_n_cases": evaluation["n_cases"],
        "test_dice": {k: v["dice_mean"] for k, v in evaluation["per_structure"].items()},
        "test_mean_dice": evaluation["mean_dice"],
        "qam_weight_clean_corrupted": _weights(name),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def _result(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _row(label: str, name: str, with_weights: bool) -> str:
    result = _result(name)
    names = [s["name"] for s in STRUCTURES]
    if result is None:
        cells = ["not run yet"] * (len(names) + 1)
    else:
        cells = [f"{result['test_dice'][n]:.3f}" if n in result["test_dice"] else "-" for n in names]
        cells.append(f"{result['test_mean_dice']:.3f}")
    if with_weights:
        w = result and result["qam_weight_clean_corrupted"]
        cells.append(f"{w[0]:.2f} / {w[1]:.2f}" if w else "-")
    return f"| {label} | " + " | ".join(cells) + " |"


def tables() -> str:
    names = [s["name"] for s in STRUCTURES]
    head = "| run | " + " | ".join(names) + " | mean |"
    head_weights = head + " QAM weight clean / corrupted |"
    lines = [
        "### Noisy labels (test split, Dice)",
        "",
        head_weights,
        "|" + "---|" * (len(names) + 3),
    ]
    lines.append(_row("0 % noise, plain", noisy_name(0, "", "plain"), True))
    for range_ in RANGES:
        for fraction in FRACTIONS:
            for method in METHODS:
                label = f"{round(fraction * 100)} % {range_}, {method}"
                lines.append(_row(label, noisy_name(fraction, range_, method), True))
    lines += [
        "",
        "### OCM lambda (75 % large noise, test split, Dice)",
        "",
        head_weights,
        "|" + "---|" * (len(names) + 3),
    ]
    lines.append(_row("QAM alone (no OCM)", noisy_name(0.75, "large", "qam"), True))
    for lam in (0.5, 1.0, 2.0, 3.0):
        name = noisy_name(0.75, "large", "qam+ocm") if lam == 2.0 else f"nl-p75-large-qam+ocm-lambda{lam}"
        lines.append(_row(f"QAM+OCM, lambda {lam}", name, True))
    lines += [
        "",
        "### Ablation on clean labels (test split, Dice)",
        "",
        head,
        "|" + "---|" * (len(names) + 2),
    ]
    for name in ABLATION:
        lines.append(_row(name, f"ablation-{name}", False))
    return "\n".join(lines)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "table"
    if command == "configs":
        print("\n".join(str(p.relative_to(ROOT)) for p in write_configs()))
    elif command == "run":
        run_all(sys.argv[2:])
    elif command == "table":
        print(tables())
    elif command == "docs":
        page = ROOT / "docs" / "noisy-labels.md"
        start, end = "<!-- results:start -->", "<!-- results:end -->"
        text = page.read_text()
        head, rest = text.split(start)
        page.write_text(head + start + "\n" + tables() + "\n" + end + rest.split(end)[1])
        print(f"written {page.relative_to(ROOT)}")
    else:
        sys.exit(__doc__)
