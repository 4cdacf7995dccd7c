"""Training and scoring of the joint registration + segmentation models from a config
file: ``python -m engine train experiments/configs/joint-NAME.json``.

A config has ``"kind": "joint"``, a ``name``, a ``model`` (a joint model card's
configuration: ``architecture`` from ``engine.models.joint.JOINT_MODELS``, ``features``,
``options``, ``spacing_mm`` (isotropic), ``window_hu``, ``axcodes``, ``structures``),
``loss`` (the weights the architecture's loss reads) and ``training``: steps, batch, lr
(AdamW, constant), ``patch`` (D, H, W voxels, multiples of 16) and ``eval_patch`` (the
larger crop of val and test pairs; default ``patch``), ``synthetic_fraction``
(share of synthetic daily-scan pairs, the rest inter-patient), ``labelled_cases`` (keep
the contours of the first N training cases only: the few-label setting of DeepAtlas),
``val_pairs`` and ``test_pairs`` ([inter-patient, synthetic]), val_every, seed, threads.

Pairs (``engine.train.joint_pairs``): train split only for training, val split for
checkpoint selection (mean registration Dice), test split for the figures in
``metrics.json``. The run directory ``var/experiments/NAME`` gets ``config.json``,
``log.jsonl``, ``best.pt``, ``last.pt`` (resumable), ``metrics.json`` and ``curve.png``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.infer.displacement import folding_percent
from engine.metrics import agreement
from engine.models.joint import JOINT_LOSSES, JOINT_MODELS, build_joint_model
from engine.models.joint.base import warp_masks
from engine.models.registry import sha256_of
from engine.train.config import TrainingConfigError, read_run_config
from engine.train.joint_pairs import (
    PTV,
    collate,
    evaluation_pairs,
    inter_patient_pair,
    load_cases,
    synthetic_pair,
)
from engine.train.segmentation import cache_dir
from engine.train.trainer import Trainer

DEFAULT_TRAINING = {
    "steps": 300,
    "batch": 1,
    "lr": 1e-3,
    "patch": [48, 48, 32],
    "eval_patch": None,
    "synthetic_fraction": 0.5,
    "labelled_cases": None,
    "val_pairs": [4, 4],
    "test_pairs": [10, 10],
    "val_every": 50,
    "seed": 0,
    "threads": None,
}


def is_joint_config(path: str | Path) -> bool:
    """Whether a run configuration is a joint-model run (``"kind": "joint"``); False for
    anything unreadable, which the ordinary loader then reports."""
    try:
        return json.loads(Path(path).read_text()).get("kind") == "joint"
    except (OSError, ValueError, AttributeError):
        return False


def load_joint_config(path: str | Path) -> dict:
    """Read a joint run configuration and fill in the training defaults.

    Raises:
        TrainingConfigError: unreadable, a missing field, an unknown architecture, a
            patch that is not three multiples of 16, or anisotropic spacing.
    """
    config = read_run_config(path)
    model = config["model"]
    if model.get("architecture") not in JOINT_MODELS:
        raise TrainingConfigError(
            f"model.architecture must be one of {sorted(JOINT_MODELS)}, got {model.get('architecture')!r}"
        )
    if len(set(model.get("spacing_mm", []))) != 1:
        raise TrainingConfigError(
            f"model.spacing_mm must be isotropic (three equal values), got {model.get('spacing_mm')}"
        )
    config["training"] = training = {**DEFAULT_TRAINING, **config.get("training", {})}
    training["eval_patch"] = training["eval_patch"] or training["patch"]
    for key in ("patch", "eval_patch"):
        patch = training[key]
        if len(patch) != 3 or any(int(p) % 16 or int(p) <= 0 for p in patch):
            raise TrainingConfigError(f"training.{key} must be 3 multiples of 16, got {patch}")
    model.setdefault("kind", "joint")
    model.setdefault("name", config["name"])
    config.setdefault("loss", {})
    return config


def _surface_metrics(pred: torch.Tensor, truth: torch.Tensor, spacing: float) -> dict:
    """Dice, HD95 and MSD (mm, ``engine.metrics``) of two (D, H, W) bool masks on an
    isotropic grid; distances None if one is empty."""
    found = agreement(pred.cpu().numpy(), truth.cpu().numpy(), (spacing,) * 3)
    return {"dice": found.dice, "hd95_mm": found.hd95_mm, "msd_mm": found.msd_mm}


def _summary(rows: list[dict]) -> dict:
    """Mean of each metric over the rows where it exists."""
    out: dict[str, Any] = {"n": len(rows)}
    for key in ("dice", "hd95_mm", "msd_mm"):
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = round(float(np.mean(values)), 4) if values else None
    return out


@torch.no_grad()
def evaluate_pairs(network: torch.nn.Module, pairs: list[tuple[str, dict]], model: dict) -> dict:
    """Score a joint network on fixed pairs, on the working grid.

    Per structure contoured in both images: Dice, HD95 and mean surface distance (mm) of
    the propagated contours (moving masks warped as probabilities, thresholded at 0.5),
    the same before registration (``identity``), and of the direct segmentation of the
    fixed image (argmax of ``seg_logits``) where the model segments. Per pair: folding %,
    DVF error (mean |ddf - true ddf| in mm over the body, HU > -500) for synthetic
    pairs, and seconds per forward pass.
    """
    network.eval()
    spacing = float(model["spacing_mm"][0])
    lo, hi = model["window_hu"]
    body_level = (-500.0 - lo) / (hi - lo)
    names = [s["name"] for s in model["structures"]]
    rows: dict[str, dict[str, list[dict]]] = {
        kind: {n: [] for n in names} for kind in ("propagated", "identity", "direct")
    }
    per_pair: list[dict[str, Any]] = []
    for pair_name, pair in pairs:
        fixed, moving = pair["fixed"][None], pair["moving"][None]
        start = time.perf_counter()
        out = network(fixed, moving)
        seconds = time.perf_counter() - start
        warped = warp_masks(pair["moving_masks"][None], out.ddf)[0] > 0.5
        truth = pair["fixed_masks"] > 0.5
        direct = None
        if out.seg_logits is not None:
            direct = out.seg_logits[0].argmax(dim=0)
        both = pair["fixed_available"] & pair["moving_available"]
        dice = []
        for c, name in enumerate(names):
            if not both[c]:
                continue
            rows["propagated"][name].append(_surface_metrics(warped[c], truth[c], spacing))
            rows["identity"][name].append(_surface_metrics(pair["moving_masks"][c] > 0.5, truth[c], spacing))
            dice.append(rows["propagated"][name][-1]["dice"])
            if direct is not None:
                rows["direct"][name].append(_surface_metrics(direct == c + 1, truth[c], spacing))
        record = {
            "pair": pair_name,
            "mean_dice": round(float(np.mean(dice)), 4) if dice else None,
            "folding_percent": round(folding_percent(out.ddf[0]), 4),
            "seconds": round(seconds, 3),
        }
        if "true_ddf" in pair:
            body = pair["fixed"][0] > body_level
            error = (out.ddf[0] - pair["true_ddf"]).norm(dim=0) * spacing
            record["dvf_error_mm"] = round(float(error[body].mean()), 3)
            record["dvf_error_before_mm"] = round(float((pair["true_ddf"].norm(dim=0) * spacing)[body].mean()), 3)
        per_pair.append(record)
    network.train()

    def table(kind: str) -> dict:
        per = {n: _summary(r) for n, r in rows[kind].items() if r}
        means = [s["dice"] for s in per.values()]
        return {
            "per_structure": per,
            "mean_dice": round(float(np.mean(means)), 4) if means else None,
        }

    def mean_of(key: str) -> float | None:
        values = [p[key] for p in per_pair if p.get(key) is not None]
        return round(float(np.mean(values)), 4) if values else None

    result: dict[str, Any] = {
        "n_pairs": len(pairs),
        "propagated": table("propagated"),
        "identity": table("identity"),
        "direct": table("direct") if any(rows["direct"].values()) else None,
        "folding_percent": mean_of("folding_percent"),
        "dvf_error_mm": mean_of("dvf_error_mm"),
        "dvf_error_before_mm": mean_of("dvf_error_before_mm"),
        "seconds_per_pair": mean_of("seconds"),
        "pairs": per_pair,
    }
    result["mean"] = result["propagated"]["mean_dice"]  # checkpoint selection
    return result


def _hide_labels(cases: list[dict], keep: int | None) -> None:
    """The few-label setting: only the first ``keep`` cases keep their organ contours
    (PTV70, the tumour mask, is kept for all)."""
    if keep is None:
        return
    for case in cases[keep:]:
        case["available"] = case["available"].copy()
        case["available"][:-1] = False


class PairSampler:
    """Random training pairs: synthetic with probability ``synthetic_fraction``, else two
    different cases; crops jittered by up to 1/8 of the patch."""

    def __init__(self, cases: list[dict], training: dict, spacing_mm: float, seed: int):
        self.cases, self.training, self.spacing = cases, training, spacing_mm
        self.rng = np.random.default_rng(seed)

    def sample(self) -> dict:
        rng, patch = self.rng, self.training["patch"]
        jitter = rng.integers(-patch[0] // 8, patch[0] // 8 + 1, size=3)
        if rng.random() < self.training["synthetic_fraction"]:
            case = self.cases[int(rng.integers(len(self.cases)))]
            return synthetic_pair(case, patch, rng, self.spacing, jitter)
        i, j = rng.choice(len(self.cases), size=2, replace=False)
        return inter_patient_pair(self.cases[int(i)], self.cases[int(j)], patch, jitter)


class JointTrainer(Trainer):
    """Joint registration + segmentation networks: the hooks of ``Trainer``.

    A step draws ``batch`` pairs (``PairSampler``) and back-propagates the
    architecture's loss (``JOINT_LOSSES``); validation scores val pairs and selects the
    checkpoint by mean registration Dice; ``finish`` scores the best on test pairs.
    AdamW, constant learning rate.
    """

    evaluate_split = "test"

    def setup(self) -> None:
        model, training = self.config["model"], self.training
        cache = cache_dir(self.out.parent, {**model, "structures": model["structures"] + [PTV]})
        self.cache = cache
        self.train_cases = load_cases(self.data, "train", model, cache)
        _hide_labels(self.train_cases, training["labelled_cases"])
        self.val_pairs = evaluation_pairs(
            load_cases(self.data, "val", model, cache),
            training["eval_patch"],
            training["val_pairs"][0],
            training["val_pairs"][1],
            self.seed,
        )
        self.sampler = PairSampler(self.train_cases, training, float(model["spacing_mm"][0]), self.seed)
        self.samplers = [self.sampler]
        network = build_joint_model(model)
        self.loss_fn = JOINT_LOSSES[model["architecture"]]
        self.modules = {"network": network}
        self.optimizers = {"network": torch.optim.AdamW(network.parameters(), lr=training["lr"], weight_decay=1e-5)}

    def train_step(self) -> dict[str, float]:
        batch = collate([self.sampler.sample() for _ in range(self.batch)])
        with self.autocast():
            loss, terms = self.loss_fn(self.network, batch, self.step, self.config["loss"])
        opt = self.optimizers["network"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach()), **terms}

    def validate(self) -> dict:
        scores = evaluate_pairs(self.network, self.val_pairs, self.config["model"])
        print(
            f"{self.name}: identity {scores['identity']['mean_dice']:.3f}, folding {scores['folding_percent']:.3f} %",
            flush=True,
        )
        return {k: v for k, v in scores.items() if k != "pairs"}

    def finish(self) -> dict:
        model, training = self.config["model"], self.training
        network = self.network
        network.load_state_dict(torch.load(self.out / "best.pt", map_location="cpu", weights_only=True))
        test_cases = load_cases(self.data, self.evaluate_split, model, self.cache)
        test = evaluation_pairs(
            test_cases, training["eval_patch"], training["test_pairs"][0], training["test_pairs"][1], self.seed + 1
        )
        best_val = max((r for r in self.log if "val" in r), key=lambda r: r["val"]["mean"])
        return {
            "name": self.name,
            "architecture": model["architecture"],
            "seed": self.seed,
            "steps": training["steps"],
            "hours": round(self.hours, 3),
            "train_cases": len(self.train_cases),
            "labelled_train_cases": int(sum(c["available"][:-1].any() for c in self.train_cases)),
            "parameters": sum(p.numel() for p in network.parameters()),
            "weights_sha256": sha256_of(self.out / "best.pt"),
            "best_val_step": best_val["step"],
            "val": best_val["val"],
            f"evaluation_{self.evaluate_split}": evaluate_pairs(network, test, model),
        }


def summary_line(metrics: dict) -> dict:
    """The headline figures of a run's metrics, for the command line."""
    key = next(k for k in metrics if k.startswith("evaluation_"))
    e = metrics[key]
    return {
        "name": metrics["name"],
        "best_val_step": metrics["best_val_step"],
        f"{key}_propagated_mean_dice": e["propagated"]["mean_dice"],
        f"{key}_identity_mean_dice": e["identity"]["mean_dice"],
        f"{key}_direct_mean_dice": e["direct"]["mean_dice"] if e["direct"] else None,
        f"{key}_dvf_error_mm": e["dvf_error_mm"],
        f"{key}_folding_percent": e["folding_percent"],
    }
