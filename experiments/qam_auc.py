"""Does the trained QAM rank corrupted contours below clean ones? ROC AUC on the test split.

    python experiments/qam_auc.py RUN [--range large] [--seed 1]

RUN is a finished run of experiments/noisy_labels.py with a QAM (var/experiments/RUN/qam_best.pt).
Every test case is scored twice by the QAM, with its clean labels and with labels
corrupted by the documented protocol (engine.train.label_noise, a different seed from
training); the AUC (MONAI ``compute_roc_auc``) is the probability that a clean pair scores
above a corrupted one. Written to var/experiments/RUN/qam_auc.json.
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

from engine.data_openkbp import case_rois, load_split
from engine.models.qam import QualityAwarenessModule
from engine.train.experiment import _cache_dir
from engine.train.label_noise import RANGES_MM, corrupt_masks
from engine.train.segmentation import _cache_case


def _score(qam: QualityAwarenessModule, image: np.ndarray, masks: np.ndarray, available: np.ndarray) -> float:
    # The QAM is convolutional with global pooling: it scores the whole volume, cropped
    # to a multiple of 16 voxels so every strided convolution keeps whole voxels.
    size = [s - s % 16 for s in image.shape]
    crop = tuple(slice(0, s) for s in size)
    labels = masks[(slice(None), *crop)] * available[:, None, None, None]
    x = np.concatenate([image[crop][None].astype(np.float32), labels.astype(np.float32)])
    with torch.no_grad():
        return float(qam(torch.as_tensor(x)[None])[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--range", default="large", choices=sorted(RANGES_MM))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "openkbp")
    args = parser.parse_args()
    out = ROOT / "var" / "experiments" / args.run
    config = json.loads((out / "config.json").read_text())
    model = config["model"]
    qam = QualityAwarenessModule(1 + len(model["structures"]))
    qam.load_state_dict(torch.load(out / "qam_best.pt", map_location="cpu", weights_only=True))
    qam.eval()
    cache = _cache_dir(out, model)
    rois = case_rois(args.data)
    rng = np.random.default_rng(args.seed)
    scores, truth, per_case = [], [], []
    for case_id in load_split(args.data, "test"):
        if case_id not in rois:
            continue
        case = _cache_case(args.data, case_id, model, cache)
        clean = _score(qam, case["image"], case["masks"], case["available"])
        noisy_masks, _ = corrupt_masks(case["masks"], model["spacing_mm"], RANGES_MM[args.range], rng, case["available"])
        corrupted = _score(qam, case["image"], noisy_masks, case["available"])
        scores += [clean, corrupted]
        truth += [1, 0]
        per_case.append({"case": case_id, "clean": round(clean, 4), "corrupted": round(corrupted, 4)})
    auc = float(compute_roc_auc(torch.tensor(scores), torch.tensor(truth)))
    result = {"run": args.run, "range": args.range, "seed": args.seed, "n_cases": len(per_case),
              "roc_auc": round(auc, 4), "per_case": per_case}
    (out / "qam_auc.json").write_text(json.dumps(result, indent=1))
    print(f"{args.run}: QAM ROC AUC clean vs corrupted ({args.range}) on {len(per_case)} test cases: {auc:.3f}")


if __name__ == "__main__":
    main()
