"""How well does the audit tell distorted contours from sound ones? ROC AUC of its checks.

    python experiments/audit_auc.py [--model hn-rt] [--seed 1]

The audit (``engine.infer.audit``) has two checks of a contour: the shipped QAM's score
(the contour-quality critic) and the contour's Dice with the model's own delineation.
This scores both on the same contours as ``experiments/qam_auc.py``: every contoured
structure of the val and test cases on the model grid, once clean and once dilated or
eroded by each range of the 3D noise protocol (``engine.train.critic_2d.score_contours``,
seed 1), and then their combination: each check's score standardised per structure by
the mean and standard deviation of that structure's clean *val* contours (so scores of a
parotid and of a PTV sit on one scale), the two averaged; and, per structure, whichever
of the three standardised checks has the higher val ROC AUC ("chosen_on_val"). The model's delineation here
is its per-structure probability above the card's threshold, on the model grid, with the
card's test-time mirroring and precision (what ``validation_dice`` scores).

Reported: ROC AUC (MONAI ``compute_roc_auc``; the probability that a clean contour
scores above a corrupted one) over all test contours, over the organs' and per structure, for each check
alone (raw and standardised) and combined. Written to
``experiments/results/audit-auc-MODEL.json`` with every contour's scores, which a later
run with the same weights and seed reuses (scoring takes about 20 minutes on 2 cores).
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

from engine.infer.critic import load_critic
from engine.infer.predict import inference_bfloat16
from engine.metrics import dice
from engine.models.registry import load_model
from engine.train.audit_calibration import aucs, clean_stats, combine, standardise
from engine.train.critic_2d import critic_scorer, roc_auc, score_contours
from engine.train.openkbp import case_rois, load_split
from engine.train.segmentation import cache_case, cache_dir, predicted_masks

RUNS = ROOT / "var" / "experiments"
RESULTS = ROOT / "experiments" / "results"


def delineations(model, cases: list[dict]) -> list[np.ndarray]:
    """The model's masks (C, X, Y, Z) bool for each case, on the model grid."""
    bfloat16 = inference_bfloat16(model.config, model.device)
    return [predicted_masks(model.network, c["image"], model.config, model.device, bfloat16) for c in cases]


def model_agreement(masks: list[np.ndarray]):
    """``score_contours``'s scorer: a contour's Dice with the model's mask of its structure."""
    return lambda k, image, contour, c: dice(contour > 0, masks[k][c])


def chosen_on_val(candidates: dict[str, dict[str, list[dict]]], names: list[str]) -> tuple[dict, dict[str, list[dict]]]:
    """Per structure, the standardised check with the highest val ROC AUC; returns
    ({structure: check}, {split: rows}) with each structure's rows from its check."""
    choice, rows = {}, {"val": [], "test": []}
    for c, name in enumerate(names):
        val = {k: [r for r in v["val"] if r["structure"] == c] for k, v in candidates.items()}
        if not all(val.values()):
            continue
        choice[name] = max(val, key=lambda k: roc_auc(val[k]))
        for split in rows:
            rows[split] += [r for r in candidates[choice[name]][split] if r["structure"] == c]
    return choice, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hn-rt")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "openkbp")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_model(args.model)
    critic = load_critic(model)
    cfg = model.config
    names = [s["name"] for s in cfg["structures"]]
    cache = cache_dir(RUNS, cfg)
    cache.mkdir(parents=True, exist_ok=True)
    rois = case_rois(args.data)
    out = RESULTS / f"audit-auc-{args.model}.json"
    checks: dict[str, dict[str, list[dict]]] = {"qam": {}, "model_dice": {}}
    if out.exists():  # the rows scored before with the same weights and seed: only the summary again
        before = json.loads(out.read_text())
        same = (before["weights_sha256"], before["qam_sha256"], before["seed"])
        if same == (model.weights_sha256, critic.weights_sha256, args.seed) and "per_contour" in before:
            checks = before["per_contour"]
    for split in ("val", "test") if not checks["qam"] else ():
        cases = [cache_case(args.data, c, cfg, cache) for c in load_split(args.data, split) if c in rois]
        masks = delineations(model, cases)
        checks["qam"][split] = score_contours(critic_scorer(critic, len(names)), cases, cfg["spacing_mm"], args.seed)
        checks["model_dice"][split] = score_contours(model_agreement(masks), cases, cfg["spacing_mm"], args.seed)
        print(f"{split}: {len(cases)} cases scored", flush=True)
    identity = {"model": args.model, "weights_sha256": model.weights_sha256, "qam_sha256": critic.weights_sha256}
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(identity | {"seed": args.seed, "per_contour": checks}) + "\n")
    standard = {
        name: {s: standardise(rows[s], clean_stats(rows["val"])) for s in rows} for name, rows in checks.items()
    }
    both = {s: combine(standard["qam"][s], standard["model_dice"][s]) for s in ("val", "test")}
    choice, chosen = chosen_on_val(standard | {"combined": both}, names)
    organs = [i for i, s in enumerate(cfg["structures"]) if s["type"] == "ORGAN"]
    result = identity | {
        "seed": args.seed,
        "n_test_contours": len(checks["qam"]["test"]),
        "roc_auc_test": {
            "qam": aucs(checks["qam"]["test"], names, organs),
            "qam_standardised": aucs(standard["qam"]["test"], names, organs),
            "model_dice": aucs(checks["model_dice"]["test"], names, organs),
            "model_dice_standardised": aucs(standard["model_dice"]["test"], names, organs),
            "combined": aucs(both["test"], names, organs),
            "chosen_on_val": aucs(chosen["test"], names, organs),
        },
        "roc_auc_val": {
            "combined": aucs(both["val"], names, organs),
            "chosen_on_val": aucs(chosen["val"], names, organs),
        },
        "chosen_on_val": choice,
    }
    out.write_text(json.dumps(result | {"per_contour": checks}) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
