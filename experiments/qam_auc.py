"""Does a trained QAM rank corrupted contours below clean ones? ROC AUC, and the audit threshold.

    python experiments/qam_auc.py RUN [--seed 1]

RUN is a finished training run with a QAM (var/experiments/RUN/qam_best.pt): an
experiments/noisy_labels.py run, or hn-rt. Every contoured structure of every case is
scored by the QAM one contour at a time, as ``python -m engine audit`` scores it
(``engine.infer.audit.qam_score``): once with its clean label, once dilated or eroded by
the documented noise protocol (``engine.train.label_noise``, small and large ranges, a
seed different from training's). The ROC AUC (MONAI ``compute_roc_auc``) is the
probability that a clean contour scores above a corrupted one. It is reported on the
test split; the threshold under which the audit calls a contour implausible is chosen on
the validation split (the score under which 10 % of the clean validation contours fall,
so that sound contours are rarely flagged), never on test. Written to
var/experiments/RUN/qam_auc.json, which ``python -m engine publish`` copies into the card.
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
from monai.metrics import compute_roc_auc

from engine.infer.audit import Critic, qam_score
from engine.models.qam import QualityAwarenessModule
from engine.models.registry import sha256_of
from engine.train.label_noise import RANGES_MM, corrupt_masks
from engine.train.openkbp import case_rois, load_split
from engine.train.segmentation import cache_case, cache_dir

CLEAN_FLAGGED = 0.10  # share of sound contours the audit may call implausible


def score_split(critic: Critic, run: Path, data: Path, split: str, seed: int) -> list[dict]:
    """One row per (case, structure): clean score and one corrupted score per range."""
    config = json.loads((run / "config.json").read_text())
    model = config["model"]
    cache = cache_dir(run.parent, model)
    cache.mkdir(exist_ok=True)
    rois, n = case_rois(data), len(model["structures"])
    rows = []
    for k, case_id in enumerate(c for c in load_split(data, split) if c in rois):
        case = cache_case(data, case_id, model, cache)
        rng = np.random.default_rng([seed, k])
        for c in range(n):
            mask = case["masks"][c]
            if not case["available"][c] or not mask.any():
                continue
            row = {
                "case": case_id,
                "structure": model["structures"][c]["name"],
                "clean": qam_score(critic, case["image"], mask, c, n),
            }
            for name, radius in RANGES_MM.items():
                noisy = corrupt_masks(mask[None], model["spacing_mm"], radius, rng)[0][0]
                row[name] = qam_score(critic, case["image"], noisy, c, n) if noisy.any() else None
            rows.append(row)
    return rows


def _pairs(rows: list[dict], ranges: tuple[str, ...]) -> tuple[list[float], list[int]]:
    scores, truth = [], []
    for r in rows:
        scores.append(r["clean"])
        truth.append(1)
        for name in ranges:
            if r[name] is not None:  # eroded away entirely: nothing left to score
                scores.append(r[name])
                truth.append(0)
    return scores, truth


def auc(rows: list[dict], ranges: tuple[str, ...]) -> float:
    scores, truth = _pairs(rows, ranges)
    return float(compute_roc_auc(torch.tensor(scores), torch.tensor(truth)))


def clean_percentile_threshold(rows: list[dict], false_flags: float = CLEAN_FLAGGED) -> float:
    """The score under which ``false_flags`` of the clean contours fall: the audit then
    calls about that share of sound contours implausible, and catches what it can."""
    return float(np.quantile([r["clean"] for r in rows], false_flags))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "openkbp")
    args = parser.parse_args()
    run = ROOT / "var" / "experiments" / args.run
    config = json.loads((run / "config.json").read_text())
    network = QualityAwarenessModule(1 + len(config["model"]["structures"]))
    network.load_state_dict(torch.load(run / "qam_best.pt", map_location="cpu", weights_only=True))
    lam = config["qam"].get("lambda") or 1.0
    critic = Critic(
        network.eval(),
        float(lam),
        int(config["training"]["patch"]),
        float("nan"),
        sha256_of(run / "qam_best.pt"),
    )
    val = score_split(critic, run, args.data, "val", args.seed)
    test = score_split(critic, run, args.data, "test", args.seed)
    threshold = clean_percentile_threshold(val)
    test_scores, test_truth = map(np.asarray, _pairs(test, tuple(RANGES_MM)))
    result = {
        "run": args.run,
        "seed": args.seed,
        "lambda": lam,
        "patch": critic.patch,
        "qam_sha256": critic.weights_sha256,
        "n_test_contours": len(test),
        "roc_auc_test": {name: round(auc(test, (name,)), 4) for name in RANGES_MM}
        | {"both": round(auc(test, tuple(RANGES_MM)), 4)},
        "threshold_val": round(threshold, 4),
        "threshold_rule": f"{CLEAN_FLAGGED:.0%} of the clean validation contours score below it",
        "test_at_threshold": {
            "clean_called_implausible": round(float(np.mean(test_scores[test_truth == 1] < threshold)), 4),
            "corrupted_called_implausible": round(float(np.mean(test_scores[test_truth == 0] < threshold)), 4),
        },
        "per_contour_test": test,
    }
    (run / "qam_auc.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "per_contour_test"}, indent=1))


if __name__ == "__main__":
    main()
