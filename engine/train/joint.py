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

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

from engine.infer.displacement import folding_percent
from engine.models.joint import JOINT_LOSSES, JOINT_MODELS, build_joint_model
from engine.models.joint.base import warp_labels
from engine.models.registry import sha256_of
from engine.train.experiment import (
    ExperimentConfigError,
    _cache_dir,
    read_run_config,
    write_curve,
)
from engine.train.joint_pairs import (
    PTV,
    collate,
    evaluation_pairs,
    inter_patient_pair,
    load_cases,
    synthetic_pair,
)
from engine.train.segmentation import _log, save_resumable

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
        ExperimentConfigError: unreadable, a missing field, an unknown architecture, a
            patch that is not three multiples of 16, or anisotropic spacing.
    """
    config = read_run_config(path)
    model = config["model"]
    if model.get("architecture") not in JOINT_MODELS:
        raise ExperimentConfigError(
            f"model.architecture must be one of {sorted(JOINT_MODELS)}, got {model.get('architecture')!r}"
        )
    if len(set(model.get("spacing_mm", []))) != 1:
        raise ExperimentConfigError(
            f"model.spacing_mm must be isotropic (three equal values), got {model.get('spacing_mm')}"
        )
    config["training"] = training = {**DEFAULT_TRAINING, **config.get("training", {})}
    training["eval_patch"] = training["eval_patch"] or training["patch"]
    for key in ("patch", "eval_patch"):
        patch = training[key]
        if len(patch) != 3 or any(int(p) % 16 or int(p) <= 0 for p in patch):
            raise ExperimentConfigError(
                f"training.{key} must be 3 multiples of 16, got {patch}"
            )
    model.setdefault("kind", "joint")
    model.setdefault("name", config["name"])
    config.setdefault("loss", {})
    return config


def _surface_metrics(pred: torch.Tensor, truth: torch.Tensor, spacing: float) -> dict:
    """Dice, HD95 and MSD (mm) of two (D, H, W) bool masks; distances None if one is empty."""
    denom = pred.sum() + truth.sum()
    dice = float(2 * (pred & truth).sum() / denom) if denom else 1.0
    if not pred.any() or not truth.any():
        return {"dice": dice, "hd95_mm": None, "msd_mm": None}
    p, t = pred[None, None].float(), truth[None, None].float()
    hd95 = compute_hausdorff_distance(p, t, percentile=95, spacing=spacing)
    msd = compute_average_surface_distance(p, t, symmetric=True, spacing=spacing)
    return {"dice": dice, "hd95_mm": float(hd95), "msd_mm": float(msd)}


def _summary(rows: list[dict]) -> dict:
    """Mean of each metric over the rows where it exists."""
    out = {"n": len(rows)}
    for key in ("dice", "hd95_mm", "msd_mm"):
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = round(float(np.mean(values)), 4) if values else None
    return out


@torch.no_grad()
def evaluate_pairs(
    network: torch.nn.Module, pairs: list[tuple[str, dict]], model: dict
) -> dict:
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
    per_pair = []
    for pair_name, pair in pairs:
        fixed, moving = pair["fixed"][None], pair["moving"][None]
        start = time.perf_counter()
        out = network(fixed, moving)
        seconds = time.perf_counter() - start
        warped = warp_labels(pair["moving_masks"][None], out.ddf)[0] > 0.5
        truth = pair["fixed_masks"] > 0.5
        direct = None
        if out.seg_logits is not None:
            direct = out.seg_logits[0].argmax(dim=0)
        both = pair["fixed_available"] & pair["moving_available"]
        dice = []
        for c, name in enumerate(names):
            if not both[c]:
                continue
            rows["propagated"][name].append(
                _surface_metrics(warped[c], truth[c], spacing)
            )
            rows["identity"][name].append(
                _surface_metrics(pair["moving_masks"][c] > 0.5, truth[c], spacing)
            )
            dice.append(rows["propagated"][name][-1]["dice"])
            if direct is not None:
                rows["direct"][name].append(
                    _surface_metrics(direct == c + 1, truth[c], spacing)
                )
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
            record["dvf_error_before_mm"] = round(
                float((pair["true_ddf"].norm(dim=0) * spacing)[body].mean()), 3
            )
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

    result = {
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


def run(
    config_path: str | Path,
    data: Path,
    out_root: Path = Path("var/experiments"),
    evaluate_split: str = "test",
) -> dict:
    """Train the joint run a config file describes (resumable), select the checkpoint on
    val pairs and score it on ``evaluate_split`` pairs. Returns the metrics dict also
    written to ``metrics.json``.

    Raises:
        ExperimentConfigError: see ``load_joint_config``.
    """
    config = load_joint_config(config_path)
    model_cfg, training, weights = config["model"], config["training"], config["loss"]
    out = Path(out_root) / config["name"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    seed = int(training["seed"])
    torch.manual_seed(seed)
    if training["threads"]:
        torch.set_num_threads(int(training["threads"]))
    spacing = float(model_cfg["spacing_mm"][0])
    cache = _cache_dir(
        out, {**model_cfg, "structures": model_cfg["structures"] + [PTV]}
    )
    train_cases = load_cases(data, "train", model_cfg, cache)
    _hide_labels(train_cases, training["labelled_cases"])
    val = evaluation_pairs(
        load_cases(data, "val", model_cfg, cache),
        training["eval_patch"],
        *training["val_pairs"],
        seed,
    )
    sampler = PairSampler(train_cases, training, spacing, seed)
    network = build_joint_model(model_cfg)
    loss_fn = JOINT_LOSSES[model_cfg["architecture"]]
    opt = torch.optim.AdamW(network.parameters(), lr=training["lr"], weight_decay=1e-5)
    step, best = 0, -1.0
    if (out / "last.pt").exists():
        state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
        network.load_state_dict(state["network"])
        opt.load_state_dict(state["optimizer"])
        step, best = state["step"], state["best"]
        sampler.rng = np.random.default_rng(seed + step)
        print(f"{config['name']}: resumed at step {step}", flush=True)
    network.train()
    sums: dict[str, list[float]] = {}
    t_last = time.time()
    while step < training["steps"]:
        batch = collate([sampler.sample() for _ in range(training["batch"])])
        loss, terms = loss_fn(network, batch, step, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        for key, value in {"loss": float(loss.detach()), **terms}.items():
            sums.setdefault(key, []).append(value)
        if step % 10 == 0:
            record = {k: float(np.mean(v)) for k, v in sums.items()}
            _log(
                out, {"step": step, **record, "s_per_step": (time.time() - t_last) / 10}
            )
            sums, t_last = {}, time.time()
        if step % training["val_every"] == 0 or step == training["steps"]:
            scores = evaluate_pairs(network, val, model_cfg)
            _log(
                out,
                {
                    "step": step,
                    "val": {k: v for k, v in scores.items() if k != "pairs"},
                },
            )
            print(
                f"{config['name']} step {step}: val mean Dice {scores['mean']:.3f} "
                f"(identity {scores['identity']['mean_dice']:.3f}), "
                f"folding {scores['folding_percent']:.3f} %",
                flush=True,
            )
            if scores["mean"] > best:
                best = scores["mean"]
                torch.save(network.state_dict(), out / "best.pt")
            save_resumable(
                out,
                {
                    "network": network.state_dict(),
                    "optimizer": opt.state_dict(),
                    "step": step,
                    "best": best,
                },
            )

    network.load_state_dict(
        torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    )
    test_cases = load_cases(data, evaluate_split, model_cfg, cache)
    test = evaluation_pairs(
        test_cases, training["eval_patch"], *training["test_pairs"], seed + 1
    )
    records = [
        json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()
    ]
    best_val = max((r for r in records if "val" in r), key=lambda r: r["val"]["mean"])
    metrics = {
        "name": config["name"],
        "architecture": model_cfg["architecture"],
        "seed": seed,
        "steps": training["steps"],
        "train_cases": len(train_cases),
        "labelled_train_cases": int(
            sum(c["available"][:-1].any() for c in train_cases)
        ),
        "parameters": sum(p.numel() for p in network.parameters()),
        "weights_sha256": sha256_of(out / "best.pt"),
        "best_val_step": best_val["step"],
        "val": best_val["val"],
        f"evaluation_{evaluate_split}": evaluate_pairs(network, test, model_cfg),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    write_curve(
        out
    )  # after metrics.json: a missing Chromium for kaleido loses no result
    return metrics


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
