"""Design changes measured on the trained network (docs/training.md, "Design changes").

    python experiments/design.py configs          # writes experiments/configs/design-*.json
    python experiments/design.py run [NAME ...]   # runs them in order (resumable; done runs skipped)
    python experiments/design.py table            # the Markdown table from experiments/results
    python experiments/design.py spacing          # the training CTs' voxel spacing (why no finer grid)

The long run ``hn`` saturated at a validation mean Dice of 0.57-0.595 from step 7000 on.
Training each design change from scratch to saturation takes about 5 hours on 2 cores, so
each is measured here as a fine-tune of the shipped network (``engine/weights/hn-rt.pt``)
against a control that fine-tunes the same
network in the same way with hn's own design: same seed, same learning-rate schedule
(AdamW, poly decay from 3e-4), the same wall-clock time on the same idle machine (so a
step that costs more gets fewer steps), scored on the val split only (20 cases, never
test) at the last step. A change that pays shows as a gain over the control beyond the
0.01-0.015 by which adjacent checkpoints of the long run differ.

The results committed in ``experiments/results/design-*.json`` started from hn's step-20000
network (val mean 0.590; ``git show 26b68f9:engine/weights/hn-rt.pt``), shipped until
2026-12-07; since then ``engine/weights/hn-rt.pt`` is hn128's (val 0.616), so a new
variant is compared with a control run again from it (delete the control's result first).
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
START = "engine/weights/hn-rt.pt"
STRUCTURES = [
    "Brainstem", "SpinalCord", "Parotid_R", "Parotid_L", "Esophagus", "Larynx", "Mandible",
    "PTV70", "PTV63", "PTV56",
]  # fmt: skip
ORGANS = STRUCTURES[:7]

# Seconds per step of hn's network in bfloat16 on the Intel Xeon (AVX512-BF16, AMX) of
# 2026-12-06, idle, from a first timing with AdamW: 80^3 x 2 patches 1.29 s, 128^3 x 1
# patch 4.26 s (``bench/train_step.py --hn --bfloat16-only``, with SGD, later gave 1.40 s
# and 3.81 s on the same machine). They fix each variant's steps at about 35 minutes.
MINUTES = 35


def _steps(seconds_per_step: float) -> int:
    return int(MINUTES * 60 / seconds_per_step) // 20 * 20


WHOLE_VOLUME = {"steps": _steps(4.26), "patch": 128, "batch": 1}
# name -> (what changes, training fields). The first two started from hn's step-20000
# network, the others from hn128's step 2500 (engine/weights/hn-rt.pt since 2026-12-07).
VARIANTS: dict[str, tuple[str, dict]] = {
    "control": ("hn's design: 80^3 patches, 2 a step", {"steps": _steps(1.29)}),
    "whole-volume": (
        "128^3 patches (the whole OpenKBP volume on the model grid, 45 cm in-plane), 1 a step",
        WHOLE_VOLUME,
    ),
    "control-128": ("from hn128: its own design, 128^3 patches, 1 a step", WHOLE_VOLUME),
    "esophagus-larynx": (
        "from hn128: a specialist for Esophagus and Larynx (loss and patch centres on them only, "
        "the cases that contour one of them)",
        WHOLE_VOLUME | {"focus": ["Esophagus", "Larynx"]},
    ),
}


def _base() -> dict:
    config = json.loads((CONFIGS / "hn.json").read_text())
    config["init"] = START
    config["training"] |= {
        "lr": 3e-4,
        "schedule": "poly",
        "evaluate_test": False,
    }
    return config


def all_configs() -> dict[str, dict]:
    configs = {}
    for name, (_, training) in VARIANTS.items():
        config = copy.deepcopy(_base())
        config["name"] = config["model"]["name"] = f"design-{name}"
        config["training"] |= training
        config["training"]["val_every"] = config["training"]["steps"]
        configs[config["name"]] = config
    return configs


def write_configs() -> list[Path]:
    from experiments.run_queue import write_configs as write

    return write(all_configs(), CONFIGS)


def run_all(names: list[str]) -> None:
    from experiments.recipe import save_result
    from experiments.run_queue import run_in_order

    run_in_order(names or list(all_configs()), CONFIGS, RUNS, DATA, ROOT, save_result)


def table() -> str:
    head = "| run | what changes | steps | " + " | ".join(STRUCTURES) + " | organ mean | mean | s/step |"
    lines = [head, "|" + "---|" * (len(STRUCTURES) + 6)]
    for key, (what, training) in VARIANTS.items():
        path = RESULTS / f"design-{key}.json"
        if not path.exists():
            lines.append(
                f"| {key} | {what} | {training['steps']} | "
                + " | ".join(["not run yet"] * (len(STRUCTURES) + 3))
                + " |"
            )
            continue
        r = json.loads(path.read_text())
        dice = [r["val_dice"].get(s) for s in STRUCTURES]
        organs = sum(dice[: len(ORGANS)]) / len(ORGANS)
        # over all ten structures, also for a specialist (whose val_mean_dice is its own structures')
        cells = [f"{d:.3f}" for d in dice] + [
            f"{organs:.3f}",
            f"**{sum(dice) / len(dice):.3f}**",
            f"{r['seconds_per_step']}",
        ]
        lines.append(f"| {key} | {what} | {r['steps']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def spacing() -> str:
    """How many training CTs have each in-plane and slice spacing (mm), from the manifest."""
    from collections import Counter

    manifest = json.loads((DATA / "manifest.json").read_text())
    split = json.loads((DATA / "split.json").read_text())
    cases = {c["case"]: c["spacing_mm"] for c in manifest["cases"]}
    train = [cases[c] for c in split["train"] + split["train_extra"]]
    lines = [f"{len(train)} training CTs"]
    for label, axis in (("in-plane", 0), ("slice", 2)):
        counts = Counter(round(s[axis], 2) for s in train)
        lines.append(f"{label}: " + ", ".join(f"{v} mm x{n}" for v, n in sorted(counts.items())))
    finer = sum(s[0] < 3.5 for s in train)
    lines.append(f"in-plane finer than the model grid's 3.5 mm: {finer} of {len(train)}")
    return "\n".join(lines)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "table"
    if command == "configs":
        print("\n".join(str(p) for p in write_configs()))
    elif command == "run":
        run_all([n if n.startswith("design-") else f"design-{n}" for n in sys.argv[2:]])
    elif command == "table":
        print(table())
    elif command == "spacing":
        print(spacing())
    else:
        sys.exit(__doc__)
