"""Paired short runs that choose the training recipe of the shipped models (docs/training.md).

    python experiments/recipe.py configs          # writes experiments/configs/recipe-*.json
    python experiments/recipe.py run [NAME ...]   # runs them in order (resumable; done runs skipped)
    python experiments/recipe.py table            # the Markdown table from experiments/results

Every run changes one thing against ``recipe-base`` (the recipe hn-oar was trained with,
on 80^3 patches so that the full-resolution level is affordable) and runs the same steps
from the same seed; each is scored on the val split only (never test). A run is
``python -m engine train experiments/configs/recipe-NAME.json --no-state``; its result
(val Dice per structure at the last step, seconds per step) is summarised into
``experiments/results/recipe-NAME.json`` (committed: var/ is not).
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
ORGANS = ["Brainstem", "SpinalCord", "Parotid_R", "Parotid_L", "Esophagus", "Larynx", "Mandible"]

STEPS = 600


def _base() -> dict:
    from engine.models.registry import model_config

    model = model_config("hn-oar")
    model["roi_size"] = [128, 128, 128]
    return {
        "name": "recipe-base",
        "model": model,
        "training": {
            "steps": STEPS,
            "patch": 80,
            "batch": 2,
            "lr": 2e-3,
            "optimizer": "adamw",
            "schedule": "onecycle",
            "fg_fraction": 0.8,
            "val_every": STEPS // 2,
            "seed": 0,
            "threads": 2,
            "evaluate_test": False,
        },
    }


# name -> (what changes, model fields, training fields)
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "base": ("hn-oar's recipe (AdamW one-cycle 2e-3, no augmentation, 120 cases)", {}, {}),
    "sgd-poly": (
        "SGD Nesterov 0.99, poly decay from 1e-2 (nnU-Net)",
        {},
        {"optimizer": "sgd", "schedule": "poly", "lr": 1e-2},
    ),
    "deep-supervision": ("deep supervision (1/2, 1/4 heads)", {"deep_supervision": True}, {}),
    "full-res": (
        "full-resolution first level (8 channels)",
        {"full_resolution_channels": 8},
        {},
    ),
    "augment": (
        "rotation, scaling, intensity, left-right mirroring with L/R swap",
        {},
        {"augment": {}},
    ),
    "extra-cases": ("153 training cases (train + train_extra)", {}, {"splits": ["train", "train_extra"]}),
    "rare-2": (
        "rare structures drawn (max/count)^2 instead of ^1",
        {},
        {"rare_power": 2.0},
    ),
    "slim": (
        "narrower deep levels, 16-32-48-64-96 (1.5 M parameters instead of 2.7 M), so the "
        "portable state of a run keeps its best network (experiments/state, 15 MB)",
        {"channels": [16, 32, 48, 64, 96]},
        {},
    ),
    "base-float32": (
        "base again, float32, on the AVX512-BF16 machine that ran bfloat16 (its pair; base "
        "itself ran on an AVX2 machine)",
        {},
        {},
    ),
    "bfloat16": (
        "bfloat16 autocast on the CPU (AVX512-BF16 machine; training step 1.75x faster, docs/benchmarks.md)",
        {},
        {"autocast": "bfloat16"},
    ),
    "with-targets": (
        "one model for organs and targets: hn-rt's 10 structures (PTV70, PTV63, PTV56 too)",
        {"structures": "hn-rt"},
        {},
    ),
}


def all_configs() -> dict[str, dict]:
    from engine.models.registry import model_config

    configs = {}
    for name, (_, model, training) in VARIANTS.items():
        if model.get("structures") == "hn-rt":
            model = {"structures": model_config("hn-rt")["structures"]}
        config = copy.deepcopy(_base())
        config["name"] = f"recipe-{name}"
        config["model"] |= model
        config["model"]["name"] = config["name"]
        config["training"] |= training
        configs[config["name"]] = config
    return configs


def write_configs() -> list[Path]:
    from experiments.run_queue import write_configs as write

    return write(all_configs(), CONFIGS)


def save_result(name: str) -> Path:
    """Summarise var/experiments/NAME into experiments/results/NAME.json."""
    records = [json.loads(line) for line in (RUNS / name / "log.jsonl").read_text().splitlines() if line.strip()]
    last = [r for r in records if "val" in r][-1]
    timing = [r["s_per_step"] for r in records if "s_per_step" in r]
    result = {
        "name": name,
        "command": f"python -m engine train experiments/configs/{name}.json --no-state",
        "steps": last["step"],
        "val_dice": {k: round(v, 4) for k, v in last["val"]["per_structure"].items()},
        "val_mean_dice": round(last["val"]["mean"], 4),
        "seconds_per_step": round(sorted(timing)[len(timing) // 2], 2) if timing else None,
        "hours": last.get("hours"),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def run_all(names: list[str]) -> None:
    from experiments.run_queue import run_in_order

    run_in_order(names or list(all_configs()), CONFIGS, RUNS, DATA, ROOT, save_result)


def table() -> str:
    head = "| run | what changes | " + " | ".join(ORGANS) + " | organ mean | s/step |"
    lines = [head, "|" + "---|" * (len(ORGANS) + 4)]
    for key, (what, _, _) in VARIANTS.items():
        path = RESULTS / f"recipe-{key}.json"
        if not path.exists():
            lines.append(f"| {key} | {what} | " + " | ".join(["not run yet"] * (len(ORGANS) + 2)) + " |")
            continue
        r = json.loads(path.read_text())
        organs = [r["val_dice"].get(o) for o in ORGANS]
        mean = sum(organs) / len(organs)
        cells = [f"{d:.3f}" for d in organs] + [f"**{mean:.3f}**", f"{r['seconds_per_step']}"]
        lines.append(f"| {key} | {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "table"
    if command == "configs":
        print("\n".join(str(p) for p in write_configs()))
    elif command == "run":
        run_all([n if n.startswith("recipe-") else f"recipe-{n}" for n in sys.argv[2:]])
    elif command == "table":
        print(table())
    else:
        sys.exit(__doc__)
