"""Does test-time mirroring pay? A shipped model's Dice on the val split without and with it.

    python experiments/test_time_mirror.py MODEL [--data ../shared/data/openkbp] [--write-card]

Evaluates MODEL on the val split twice (``engine.train.evaluate``: Dice on each CT's own
grid, where the structure is contoured): as a plain forward pass, and averaged with the
pass on the left-right mirrored CT, flipped back with left and right structures swapped
(``engine.infer.predict``). Writes experiments/results/tta-MODEL.json; ``--write-card``
stores the choice (mirroring on where its val mean Dice is higher) and both figures in
the card (``engine.train.publish.set_test_time_mirror``). The test split is not looked at.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.models.registry import load_model  # noqa: E402 (after the path is set)
from engine.train.evaluate import evaluate  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "openkbp"))
    parser.add_argument("--write-card", action="store_true")
    args = parser.parse_args()
    model = load_model(args.model)
    results = {}
    for on in (False, True):
        model.config["test_time_mirror"] = on
        results[on] = evaluate(model, Path(args.data), "val")
    off_r, on_r = results[False], results[True]
    choice = {
        "on": on_r["mean_dice"] > off_r["mean_dice"],
        "weights_sha256": model.weights_sha256,
        "split": "val",
        "mean_dice_off": off_r["mean_dice"],
        "mean_dice_on": on_r["mean_dice"],
        "per_structure": {
            name: [s["dice_mean"], on_r["per_structure"][name]["dice_mean"]]
            for name, s in off_r["per_structure"].items()
        },
        "seconds": [off_r["seconds"], on_r["seconds"]],
        "command": f"python experiments/test_time_mirror.py {args.model} --write-card",
    }
    out = ROOT / "experiments" / "results" / f"tta-{args.model}.json"
    out.write_text(json.dumps(choice, indent=1) + "\n")
    print("| structure | without | with |\n|---|---|---|")
    for name, (off, on) in choice["per_structure"].items():
        print(f"| {name} | {off:.3f} | {on:.3f} |")
    print(f"| **mean** | **{choice['mean_dice_off']:.3f}** | **{choice['mean_dice_on']:.3f}** |")
    print(f"seconds: {off_r['seconds']} without, {on_r['seconds']} with; written {out.relative_to(ROOT)}")
    if args.write_card:
        from engine.train.publish import set_test_time_mirror

        set_test_time_mirror(args.model, choice)
        print(f"card: test_time_mirror {'on' if choice['on'] else 'off'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
