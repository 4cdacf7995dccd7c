"""What the product's label map costs the structures that overlap: Dice of each structure
as the label map holds it (each voxel to its most probable structure, what the exports
hold today) and on its own (the same probabilities, overlaps kept, as the audit compares
it since 2026-12-08: ``engine.infer.audit.model_view``), on the CT's grid, against the
physician's contours.

    python experiments/overlap_loss.py [--model hn-rt] [--split test]

Also per structure: the share of the physician's own contour that lies inside another
of the model's structures as the physician drew them (how much overlap the structure set
holds), and the share of the model's own delineation the label map gives to another
structure. Written to ``experiments/results/overlap-loss-MODEL-SPLIT.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch

from engine.infer.audit import model_view
from engine.metrics import dice
from engine.models.registry import load_model
from engine.train.openkbp import case_rois, load_case, load_split

RESULTS = ROOT / "experiments" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hn-rt")
    parser.add_argument("--split", default="test")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "openkbp")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_model(args.model)
    cfg = model.config
    names = [s["name"] for s in cfg["structures"]]
    values = [s["label"] for s in cfg["structures"]]
    rows: dict[str, list[dict]] = {n: [] for n in names}
    rois = case_rois(args.data)
    for case in load_split(args.data, args.split):
        if case not in rois:
            continue
        ct, masks, available = load_case(args.data, case, cfg["structures"])
        view = model_view(ct, model)
        for c, name in enumerate(names):
            if not available[c]:
                continue
            own = view.delineation(c)
            in_map = view.labels.array == values[c]
            others = np.any(masks[[k for k in range(len(names)) if k != c and available[k]]], axis=0)
            rows[name].append(
                {
                    "case": case,
                    "dice_label_map": dice(in_map, masks[c]),
                    "dice_own": dice(own, masks[c]),
                    "contour_in_other": float((masks[c] & others).sum() / max(masks[c].sum(), 1)),
                    "model_given_away": float((own & ~in_map).sum() / max(own.sum(), 1)),
                }
            )
        print(case, flush=True)
    organs = [s["name"] for s in cfg["structures"] if s["type"] == "ORGAN"]
    summary = {
        name: {
            key: round(float(np.mean([r[key] for r in own])), 4)
            for key in ("dice_label_map", "dice_own", "contour_in_other", "model_given_away")
        }
        | {"n": len(own)}
        for name, own in rows.items()
        if own
    }

    def mean_over(group: list[str]) -> dict[str, float]:
        return {
            key: round(float(np.mean([summary[n][key] for n in group if n in summary])), 4)
            for key in ("dice_label_map", "dice_own")
        }

    result = {"model": args.model, "weights_sha256": model.weights_sha256, "split": args.split}
    result |= {"organs_mean": mean_over(organs), "all_mean": mean_over(names)}
    result |= {"per_structure": summary}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"overlap-loss-{args.model}-{args.split}.json").write_text(
        json.dumps(result | {"per_case": rows}) + "\n"
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
