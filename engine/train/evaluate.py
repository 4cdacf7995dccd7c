"""Accuracy of a shipped model on an OpenKBP split: Dice and HD95 (mm) per structure.

Metrics of ``engine.metrics`` (the case's voxel spacing), on the CT's own grid, for the
structures contoured in each case only. A structure the model misses entirely scores
Dice 0 and has no HD95 (counted in ``missed``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.infer.segment import segment_volume
from engine.metrics import agreement
from engine.models.registry import LoadedModel
from engine.train.openkbp import case_rois, load_case, load_split


def evaluate(model: LoadedModel, data: Path, split: str) -> dict:
    """Per-case and per-structure Dice and HD95 of ``model`` on ``split`` of OpenKBP."""
    rois = case_rois(data)
    structures = model.config["structures"]
    per_case, start = [], time.perf_counter()
    for case in load_split(data, split):
        if case not in rois:
            continue
        ct, masks, available = load_case(data, case, structures)
        labels = segment_volume(ct, model).array
        row: dict[str, Any] = {"case": case}
        for i, s in enumerate(structures):
            if available[i]:
                found = agreement(labels == s["label"], masks[i], ct.spacing)
                row[s["name"]] = {
                    "dice": round(found.dice, 4),
                    "hd95_mm": None if found.hd95_mm is None else round(found.hd95_mm, 2),
                }
        per_case.append(row)
        print(
            f"{case}: " + ", ".join(f"{k} {v['dice']:.3f}" for k, v in row.items() if k != "case"),
            flush=True,
        )
    summary = {}
    for s in structures:
        scores = [r[s["name"]] for r in per_case if s["name"] in r]
        if not scores:
            continue
        hd = [x["hd95_mm"] for x in scores if x["hd95_mm"] is not None]
        summary[s["name"]] = {
            "n": len(scores),
            "dice_mean": round(float(np.mean([x["dice"] for x in scores])), 4),
            "dice_std": round(float(np.std([x["dice"] for x in scores])), 4),
            "hd95_mm_mean": round(float(np.mean(hd)), 2) if hd else None,
            "hd95_mm_median": round(float(np.median(hd)), 2) if hd else None,
            "missed": len(scores) - len(hd),
        }
    return {
        "model": model.name,
        "weights_sha256": model.weights_sha256,
        "split": split,
        "n_cases": len(per_case),
        "mean_dice": round(float(np.mean([v["dice_mean"] for v in summary.values()])), 4),
        "per_structure": summary,
        "per_case": per_case,
        "seconds": round(time.perf_counter() - start, 1),
    }


def format_table(result: dict) -> str:
    lines = [f"{'structure':<12} {'n':>3} {'Dice':>14} {'HD95 mm (mean/median)':>22}"]
    for name, s in result["per_structure"].items():
        hd = f"{s['hd95_mm_mean']}/{s['hd95_mm_median']}" if s["hd95_mm_mean"] is not None else "-"
        lines.append(f"{name:<12} {s['n']:>3} {s['dice_mean']:>7.3f} ± {s['dice_std']:.3f} {hd:>22}")
    lines.append(
        f"mean Dice over structures: {result['mean_dice']:.3f} ({result['n_cases']} cases, {result['split']} split)"
    )
    return "\n".join(lines)


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
