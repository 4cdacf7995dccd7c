"""Does a trained QAM rank corrupted contours below clean ones? ROC AUC, and the audit threshold.

    python experiments/qam_auc.py RUN [--seed 1]

RUN is a finished training run with a QAM (var/experiments/RUN/qam_best.pt): an
experiments/noisy_labels.py run, hn-rt's first (3D) critic, or a 2D critic run
(``"kind": "critic2d"``, ``engine.train.critic_2d``, which writes the same file when it
ends; this recomputes it). Every contoured
structure of every case is scored by the QAM one contour at a time, as ``python -m
engine audit`` scores it (``engine.infer.critic.qam_score``, through
``engine.train.critic_2d.score_contours``): once with its clean label, once dilated or
eroded by the documented noise protocol (``engine.train.label_noise``, small and large ranges, a
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

import torch

from engine.infer.critic import Critic
from engine.models.qam import QualityAwarenessModule
from engine.models.registry import sha256_of
from engine.train.critic_2d import DEFAULT_QAM_CHANNELS, calibration, critic_scorer, score_contours
from engine.train.openkbp import case_rois, load_split
from engine.train.segmentation import cache_case, cache_dir


def split_cases(run: Path, data: Path, split: str) -> list[dict]:
    """The contoured cases of ``split`` on the run's model grid (the shared cache)."""
    model = json.loads((run / "config.json").read_text())["model"]
    cache = cache_dir(run.parent, model)
    cache.mkdir(exist_ok=True)
    rois = case_rois(data)
    return [cache_case(data, c, model, cache) for c in load_split(data, split) if c in rois]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "openkbp")
    args = parser.parse_args()
    run = ROOT / "var" / "experiments" / args.run
    config = json.loads((run / "config.json").read_text())
    two_d = config.get("kind") == "critic2d"
    channels = tuple(config["qam"].get("channels", DEFAULT_QAM_CHANNELS)) if two_d else (8, 16, 32, 32)
    network = QualityAwarenessModule(
        1 + len(config["model"]["structures"]), channels=channels, spatial_dims=2 if two_d else 3
    )
    network.load_state_dict(torch.load(run / "qam_best.pt", map_location="cpu", weights_only=True))
    lam = config["qam"].get("lambda") or (2.0 if two_d else 1.0)
    critic = Critic(
        network.eval(),
        float(lam),
        int(config["training"]["patch"]),
        float("nan"),
        sha256_of(run / "qam_best.pt"),
        spatial_dims=2 if two_d else 3,
    )
    spacing = config["model"]["spacing_mm"]
    names = [s["name"] for s in config["model"]["structures"]]
    scorer = critic_scorer(critic, len(names))
    val = score_contours(scorer, split_cases(run, args.data, "val"), spacing, args.seed)
    test = score_contours(scorer, split_cases(run, args.data, "test"), spacing, args.seed)
    result = {
        "run": args.run,
        "seed": args.seed,
        "lambda": lam,
        "patch": critic.patch,
        "spatial_dims": critic.spatial_dims,
        "channels": list(channels),
        "structures": names,
        "qam_sha256": critic.weights_sha256,
        **calibration(val, test, names),
        "per_contour_test": test,
    }
    (run / "qam_auc.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "per_contour_test"}, indent=1))


if __name__ == "__main__":
    main()
