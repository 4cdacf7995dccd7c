"""Training runs from a config file: ``python -m engine train CONFIG``.

One JSON file describes a run (see ``configs/noisy-labels/`` and docs/noisy-labels.md):

* ``model``: the network and its grid, as a model card's configuration (architecture,
  channels, ``residual``, ``se``, spacing_mm, window_hu, roi_size, threshold, structures).
* ``training``: steps, patch, batch, lr, ``schedule`` ("onecycle", "cyclic" or
  "constant"; "cyclic" is the thesis's "Cycle": ``torch.optim.lr_scheduler.CyclicLR``),
  ``loss`` ("dice+ce" or "ce"), fg_fraction, val_every, seed, train_cases (a limit).
* ``noise`` (optional): fraction of training cases corrupted, "small" or "large" radius
  range, seed (``engine.train.label_noise``).
* ``init`` (optional): a state dict to start from (e.g. ``engine/weights/hn-oar.pt``);
  tensors whose name and shape match are copied, the rest (a wider output layer for
  more structures) keep their random initialisation.
* ``qam`` (optional): Pick-and-Learn sample weighting (``engine.models.qam``) with
  ``lambda`` (a number: QAM+OCM; null: QAM alone) and its own learning rate.
  ``corrupt_copies: "small"|"large"`` trains the QAM alone (the network trains as plain)
  as a contour-quality critic: its batch holds, per sample, one contoured structure with
  its label and a copy corrupted by the noise protocol, each scored by the network's loss
  on that structure, so the QAM learns what an imprecise contour looks like for its
  image (``python -m engine audit``).

The run directory gets ``config.json`` (as run), ``log.jsonl`` (loss, learning rate, mean
QAM weight of clean and of corrupted samples, validation Dice), ``best.pt``,
``qam_best.pt``, ``last.pt`` (resumable), ``metrics.json`` (test-split Dice and HD95 of
the best checkpoint) and ``curve.png`` / ``curve.html`` (plotly).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from engine.data_openkbp import case_rois, load_split
from engine.models.qam import QualityAwarenessModule, sample_weights, weighted_loss
from engine.models.registry import LoadedModel, build_network, sha256_of
from engine.train.label_noise import RANGES_MM, corrupt_masks, noisy_cases
from engine.train.segmentation import (
    PatchSampler,
    _cache_case,
    _log,
    _validate,
    save_resumable,
)

DEFAULT_TRAINING = {
    "steps": 400,
    "patch": 64,
    "batch": 4,
    "lr": 2e-3,
    "schedule": "onecycle",
    "loss": "dice+ce",
    "fg_fraction": 0.8,
    "val_every": 100,
    "seed": 0,
    "train_cases": None,
}
SCHEDULES = ("onecycle", "cyclic", "constant")
LOSSES = ("dice+ce", "ce")


class ExperimentConfigError(ValueError):
    """A run configuration with a missing or invalid field; the message names it."""


def read_run_config(path: str | Path) -> dict:
    """The JSON of a run configuration (segmentation or joint), with "name" and "model".

    Raises:
        ExperimentConfigError: unreadable, not JSON, or without "name" or "model".
    """
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ExperimentConfigError(
            f"{path}: cannot read the run configuration ({exc})"
        ) from exc
    for key in ("name", "model"):
        if key not in config:
            raise ExperimentConfigError(f"{path}: the run configuration has no {key!r}")
    return config


def load_config(path: str | Path) -> dict:
    """Read a run configuration and fill in the training defaults.

    Raises:
        ExperimentConfigError: not JSON, or a missing/invalid field.
    """
    config = read_run_config(path)
    config["training"] = {**DEFAULT_TRAINING, **config.get("training", {})}
    training = config["training"]
    if training["schedule"] not in SCHEDULES:
        raise ExperimentConfigError(f"training.schedule must be one of {SCHEDULES}")
    if training["loss"] not in LOSSES:
        raise ExperimentConfigError(f"training.loss must be one of {LOSSES}")
    noise = config.get("noise")
    if noise and noise.get("range") not in RANGES_MM:
        raise ExperimentConfigError(f"noise.range must be one of {sorted(RANGES_MM)}")
    qam = config.get("qam")
    if qam and training["batch"] < 2 and not qam.get("corrupt_copies"):
        raise ExperimentConfigError(
            "the QAM weights samples within a batch: training.batch must be >= 2"
        )
    if qam and qam.get("corrupt_copies", "large") not in RANGES_MM:
        raise ExperimentConfigError(
            f"qam.corrupt_copies must be one of {sorted(RANGES_MM)}"
        )
    return config


def per_sample_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    available: torch.Tensor,
    dice: bool = True,
) -> torch.Tensor:
    """Segmentation loss per sample (B,): mean over the structures contoured in it of
    soft Dice + binary cross-entropy (or cross-entropy alone with ``dice=False``).

    logits, target: (B, C, X, Y, Z); available: (B, C) bool.
    """
    terms = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(
        dim=(2, 3, 4)
    )
    if dice:
        terms = terms + DiceLoss(sigmoid=True, reduction="none")(
            logits, target
        ).flatten(1)
    w = available.float()
    return (terms * w).sum(dim=1) / w.sum(dim=1).clamp(min=1)


def _one_structure_pairs(
    y: torch.Tensor,
    available: torch.Tensor,
    spacing_mm: list[float],
    radius_range: str,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each sample, one contoured structure (one present in the patch when there is
    one) and a copy of its mask corrupted by the noise protocol.

    y: (B, C, X, Y, Z) 0/1; available: (B, C) bool. Returns (noisy labels (B, C, X, Y, Z),
    the chosen structure as a (B, C) bool one-hot), so the critic judges one contour at a
    time, as ``python -m engine audit`` asks it to.
    """
    noisy, chosen = y.clone(), torch.zeros_like(available, dtype=torch.bool)
    for b in range(y.shape[0]):
        present = [
            c for c in range(y.shape[1]) if available[b, c] and bool(y[b, c].any())
        ]
        options = present or [c for c in range(y.shape[1]) if available[b, c]]
        if not options:
            continue
        c = int(rng.choice(options))
        chosen[b, c] = True
        mask = y[b, c : c + 1].cpu().numpy()
        noisy[b, c] = torch.as_tensor(
            corrupt_masks(mask, spacing_mm, RANGES_MM[radius_range], rng)[0][0]
        ).to(y)
    return noisy, chosen


def _scheduler(
    opt: torch.optim.Optimizer, training: dict
) -> torch.optim.lr_scheduler.LRScheduler:
    steps, lr = training["steps"], training["lr"]
    if training["schedule"] == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=steps, pct_start=0.1
        )
    if training["schedule"] == "cyclic":
        # Four triangular cycles between lr/10 and lr, the amplitude halving each cycle.
        half = max(1, steps // 8)
        return torch.optim.lr_scheduler.CyclicLR(
            opt,
            base_lr=lr / 10,
            max_lr=lr,
            step_size_up=half,
            mode="triangular2",
            cycle_momentum=False,
        )
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def warm_start(network: torch.nn.Module, path: Path) -> int:
    """Copy every tensor of the state dict at ``path`` whose name and shape match; returns how many.

    A tensor that differs in one dimension only (the output channels of the last layers
    of a network with more structures) gets the source's channels copied, so the structures the source was
    trained on start where the source left them, in the same order.

    Raises:
        ExperimentConfigError: the file does not exist or no tensor matches.
    """
    if not path.exists():
        raise ExperimentConfigError(f"init: {path} does not exist")
    source = torch.load(path, map_location="cpu", weights_only=True)
    own = network.state_dict()
    copied = {}
    for k, v in source.items():
        if k not in own:
            continue
        if own[k].shape == v.shape:
            copied[k] = v
        elif own[k].ndim == v.ndim:
            differ = [d for d in range(v.ndim) if own[k].shape[d] != v.shape[d]]
            if (
                len(differ) == 1
            ):  # out channels: dim 0 of a conv, 1 of a transposed conv
                part = [slice(None)] * v.ndim
                part[differ[0]] = slice(
                    0, min(v.shape[differ[0]], own[k].shape[differ[0]])
                )
                copied[k] = own[k].clone()
                copied[k][tuple(part)] = v[tuple(part)]
    if not copied:
        raise ExperimentConfigError(f"init: no tensor of {path} fits this network")
    network.load_state_dict(own | copied)
    return len(copied)


def _cache_dir(out: Path, model: dict) -> Path:
    """Cases resampled once per grid and structure list, shared by the runs that use it."""
    key = json.dumps(
        [
            model["spacing_mm"],
            model["window_hu"],
            model["axcodes"],
            [s["source"] for s in model["structures"]],
        ]
    )
    return out.parent / f"cache-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def write_curve(out: Path) -> Path:
    """Plot the run's training loss, validation Dice and QAM weights (plotly): curve.png and .html."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    records = [
        json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()
    ]
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val" in r]
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("training loss", "validation Dice / QAM weight")
    )
    fig.add_trace(
        go.Scatter(
            x=[r["step"] for r in train], y=[r["loss"] for r in train], name="loss"
        ),
        1,
        1,
    )
    fig.add_trace(
        go.Scatter(
            x=[r["step"] for r in val],
            y=[r["val"]["mean"] for r in val],
            name="val mean Dice",
        ),
        1,
        2,
    )
    for key, label in (
        ("weight_clean", "QAM weight, clean"),
        ("weight_corrupted", "QAM weight, corrupted"),
    ):
        points = [r for r in train if r.get(key) is not None]
        if points:
            fig.add_trace(
                go.Scatter(
                    x=[r["step"] for r in points],
                    y=[r[key] for r in points],
                    name=label,
                ),
                1,
                2,
            )
    fig.update_layout(title=out.name, width=1000, height=400)
    fig.write_html(out / "curve.html", include_plotlyjs=True)
    fig.write_image(out / "curve.png")
    return out / "curve.png"


def run(
    config_path: str | Path,
    data: Path,
    out_root: Path = Path("var/experiments"),
    evaluate_split: str = "test",
) -> dict:
    """Train the run a config file describes (resumable) and score its best checkpoint.

    Returns the metrics dict also written to ``metrics.json``.

    Raises:
        ExperimentConfigError: see ``load_config``.
    """
    from engine.evaluate import evaluate

    config = load_config(config_path)
    model_cfg, training = config["model"], config["training"]
    model_cfg.setdefault("name", config["name"])
    out = Path(out_root) / config["name"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    seed = int(training["seed"])
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    cache = _cache_dir(out, model_cfg)
    cache.mkdir(exist_ok=True)
    rois = case_rois(data)
    train_ids = [c for c in load_split(data, "train") if c in rois][
        : training["train_cases"]
    ]
    train_cases = [_cache_case(data, c, model_cfg, cache) for c in train_ids]
    val_cases = [
        _cache_case(data, c, model_cfg, cache)
        for c in load_split(data, "val")
        if c in rois
    ]
    noise = config.get("noise") or {}
    corrupted = noisy_cases(
        train_ids, float(noise.get("fraction", 0.0)), int(noise.get("seed", 0))
    )
    corruption_log = {}
    for k, case in enumerate(train_cases):
        if case["case"] in corrupted:
            rng = np.random.default_rng([int(noise.get("seed", 0)), k])
            case["masks"], record = corrupt_masks(
                case["masks"],
                model_cfg["spacing_mm"],
                RANGES_MM[noise["range"]],
                rng,
                case["available"],
            )
            corruption_log[case["case"]] = [vars(r) for r in record]
    (out / "corruption.json").write_text(json.dumps(corruption_log, indent=1))
    is_corrupted = np.array([c["case"] in corrupted for c in train_cases])

    freq = np.array(
        [
            sum(c["available"][i] for c in train_cases)
            for i in range(len(model_cfg["structures"]))
        ]
    )
    sampler = PatchSampler(
        train_cases,
        training["patch"],
        training["fg_fraction"],
        (freq.max() / np.maximum(freq, 1)).astype(float),
        seed,
    )
    network = build_network(model_cfg)
    if config.get("init"):
        copied = warm_start(network, Path(config["init"]))
        print(
            f"{config['name']}: {copied} tensors copied from {config['init']}",
            flush=True,
        )
    network = network.to(device)
    opt = torch.optim.AdamW(network.parameters(), lr=training["lr"], weight_decay=1e-5)
    sched = _scheduler(opt, training)
    qam_cfg = config.get("qam")
    qam = qam_opt = None
    if qam_cfg:
        qam = QualityAwarenessModule(1 + len(model_cfg["structures"])).to(device)
        qam_opt = torch.optim.AdamW(qam.parameters(), lr=float(qam_cfg.get("lr", 1e-3)))
    step, best = 0, -1.0
    if (out / "last.pt").exists():
        state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
        network.load_state_dict(state["network"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if qam is not None:
            qam.load_state_dict(state["qam"])
            qam_opt.load_state_dict(state["qam_optimizer"])
        step, best = state["step"], state["best"]
        sampler.rng = np.random.default_rng(seed + step)
    network.train()
    use_dice = training["loss"] == "dice+ce"
    sums = {"clean": [0.0, 0], "corrupted": [0.0, 0], "loss": [0.0, 0]}
    t_last = time.time()
    while step < training["steps"]:
        items, flags = [], []
        for _ in range(training["batch"]):
            items.append(sampler.sample())
            flags.append(bool(is_corrupted[sampler.last_index]))
        x = torch.as_tensor(np.stack([i[0] for i in items])).to(device)
        y = torch.as_tensor(np.stack([i[1] for i in items])).float().to(device)
        a = torch.as_tensor(np.stack([i[2] for i in items])).to(device)
        logits = network(x)
        losses = per_sample_loss(logits, y, a, dice=use_dice)
        uniform = torch.full_like(losses, 1.0 / len(losses))
        weights, critic_loss = uniform, None
        if qam is not None:
            qx, qy, qa, qlosses, qflags = x, y, a, losses, flags
            if qam_cfg.get("corrupt_copies"):
                noisy, one = _one_structure_pairs(
                    y,
                    a,
                    model_cfg["spacing_mm"],
                    qam_cfg["corrupt_copies"],
                    sampler.rng,
                )
                qx, qy, qa = (
                    torch.cat([x, x]),
                    torch.cat([y, noisy]),
                    torch.cat([one, one]),
                )
                qlosses = per_sample_loss(
                    torch.cat([logits, logits]), qy, qa, dice=use_dice
                )
                qflags = flags + [True] * len(flags)
            labels = qy * qa[:, :, None, None, None].float()
            qweights = sample_weights(
                qam(torch.cat([qx, labels], dim=1)), qam_cfg.get("lambda")
            )
            if not qam_cfg.get("corrupt_copies"):
                weights = qweights
            else:
                # The critic learns from the losses without steering the network.
                critic_loss = weighted_loss(qlosses.detach(), qweights)
            flags_logged, weights_logged = qflags, qweights
        else:
            flags_logged, weights_logged = flags, weights
        loss = weighted_loss(losses, weights)
        opt.zero_grad(set_to_none=True)
        if qam_opt is not None:
            qam_opt.zero_grad(set_to_none=True)
        (loss if critic_loss is None else loss + critic_loss).backward()
        opt.step()
        if qam_opt is not None:
            qam_opt.step()
        sched.step()
        step += 1
        for w, flag in zip(
            weights_logged.detach().cpu().tolist(), flags_logged, strict=True
        ):
            # Weight relative to uniform (1/B): 1 means "as plain training".
            entry = sums["corrupted" if flag else "clean"]
            entry[0] += w * len(flags_logged)
            entry[1] += 1
        sums["loss"][0] += float(loss.detach())
        sums["loss"][1] += 1
        if step % 20 == 0:
            record = {
                "step": step,
                "loss": sums["loss"][0] / sums["loss"][1],
                "lr": sched.get_last_lr()[0],
                "s_per_step": (time.time() - t_last) / 20,
            }
            if qam is not None:
                for key in ("clean", "corrupted"):
                    total, n = sums[key]
                    record[f"weight_{key}"] = total / n if n else None
            _log(out, record)
            sums = {"clean": [0.0, 0], "corrupted": [0.0, 0], "loss": [0.0, 0]}
            t_last = time.time()
        if step % training["val_every"] == 0 or step == training["steps"]:
            val = _validate(network, val_cases, model_cfg, device)
            _log(out, {"step": step, "val": val})
            print(
                f"{config['name']} step {step}: val mean Dice {val['mean']:.3f}",
                flush=True,
            )
            if val["mean"] > best:
                best = val["mean"]
                torch.save(network.state_dict(), out / "best.pt")
                if qam is not None:
                    torch.save(qam.state_dict(), out / "qam_best.pt")
            state = {
                "network": network.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "step": step,
                "best": best,
            }
            if qam is not None:
                state |= {
                    "qam": qam.state_dict(),
                    "qam_optimizer": qam_opt.state_dict(),
                }
            save_resumable(out, state)

    network.load_state_dict(
        torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    )
    loaded = LoadedModel(
        config["name"],
        network.eval(),
        copy.deepcopy(model_cfg),
        sha256_of(out / "best.pt"),
        device,
    )
    metrics = {
        "name": config["name"],
        "seed": seed,
        "best_val_mean_dice": round(best, 4),
        "train_cases": len(train_cases),
        "corrupted_cases": len(corrupted),
        "evaluation": evaluate(loaded, data, evaluate_split),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    write_curve(
        out
    )  # after metrics.json: a missing Chromium for kaleido loses no result
    return metrics
