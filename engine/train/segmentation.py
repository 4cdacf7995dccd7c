"""Training of the Res-UNet + SE structure models on OpenKBP (multi-label, partial labels).

Loss per sample and structure: soft Dice + binary cross-entropy on sigmoid outputs
(Milletari et al., V-Net, 2016; MONAI ``DiceLoss``), counted only for structures
contoured in that case: OpenKBP leaves many organs uncontoured, and an uncontoured
organ is unknown, not background. With deep supervision the loss is summed over the
output scales with weights 1, 1/2, 1/4 (normalised), the masks downsampled by nearest
neighbour, as nnU-Net does. Patches are centred on a contoured structure with
probability ``fg_fraction``, rare structures (oesophagus, larynx) drawn more often.

``SegmentationTrainer`` fills in the hooks of ``engine.train.trainer.Trainer``; the run's
configuration is described in ``engine.train.config``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from engine.infer.grid import image_to_model_grid, labels_to_model_grid
from engine.infer.predict import predict_probabilities, test_time_mirror
from engine.metrics import dice
from engine.models.registry import LoadedModel, build_network, sha256_of
from engine.train.augment import PatchAugmenter
from engine.train.config import TrainingConfigError
from engine.train.openkbp import case_rois, load_case, load_split, masks_to_bitfield
from engine.train.trainer import Trainer


def cache_case(data: Path, case: str, config: dict, cache: Path) -> dict:
    path = cache / f"{case}.npz"
    if not path.exists():
        ct, masks, available = load_case(data, case, config["structures"])
        img = image_to_model_grid(ct, config["spacing_mm"], config["window_hu"], config["axcodes"])
        bits = labels_to_model_grid(masks_to_bitfield(masks, ct.affine), config["spacing_mm"], config["axcodes"])
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            image=img[0].numpy().astype(np.float16),
            bits=bits[0].numpy().astype(np.int16),
            available=available,
        )
        tmp.rename(path)
    with np.load(path) as z:
        bits = z["bits"]
        masks = np.stack([(bits >> i) & 1 for i in range(len(config["structures"]))]).astype(np.uint8)
        return {
            "case": case,
            "image": z["image"],
            "masks": masks,
            "available": z["available"],
        }


def cache_dir(out_root: Path, model: dict) -> Path:
    """Cases resampled once per grid and structure list, shared by the runs that use it."""
    key = json.dumps(
        [
            model["spacing_mm"],
            model["window_hu"],
            model["axcodes"],
            [s["source"] for s in model["structures"]],
        ]
    )
    return Path(out_root) / f"cache-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def _pad_to(a: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    pad = [(0, 0)] * (a.ndim - 3) + [(0, max(0, s - d)) for s, d in zip(size, a.shape[-3:])]
    return np.pad(a, pad)


class PatchSampler:
    """Random (image (1, p, p, p), masks (C, p, p, p), available (C,)) patches of ``patch``
    voxels from cached cases, augmented by ``augmenter`` when one is given."""

    def __init__(
        self,
        cases: list[dict],
        patch: int,
        fg_fraction: float,
        weights: np.ndarray,
        seed: int,
        augmenter: PatchAugmenter | None = None,
    ):
        self.cases, self.patch, self.fg, self.weights = (
            cases,
            patch,
            fg_fraction,
            weights,
        )
        self.augmenter = augmenter
        self.rng = np.random.default_rng(seed)
        # Flat int32 indices in C order (those of np.argwhere, a sixth of its memory: 153
        # cases of 10 structures held 3 GB as coordinates).
        self.fg_voxels = [[np.flatnonzero(m).astype(np.int32) if m.any() else None for m in c["masks"]] for c in cases]

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = int(self.rng.integers(len(self.cases)))
        self.last_index = k  # which case the patch came from (clean or corrupted)
        case, p = self.cases[k], self.patch
        shape = case["image"].shape
        centre = np.array([self.rng.integers(s) for s in shape])
        present = [i for i, v in enumerate(self.fg_voxels[k]) if v is not None and self.weights[i] > 0]
        if present and self.rng.random() < self.fg:
            w = self.weights[present] / self.weights[present].sum()
            s = present[int(self.rng.choice(len(present), p=w))]
            vox = cast(np.ndarray, self.fg_voxels[k][s])  # present: not None
            centre = np.array(np.unravel_index(vox[self.rng.integers(len(vox))], shape)) + self.rng.integers(
                -p // 4, p // 4 + 1, size=3
            )
        start = [int(np.clip(c - p // 2, 0, max(0, s - p))) for c, s in zip(centre, shape)]
        sl = tuple(slice(b, b + p) for b in start)
        image = _pad_to(case["image"][sl].astype(np.float32), (p, p, p))
        masks = _pad_to(case["masks"][(slice(None), *sl)], (p, p, p))
        # intensity augmentation: contrast and brightness jitter, noise
        image = image * self.rng.uniform(0.9, 1.1) + self.rng.uniform(-0.05, 0.05)
        image = image + self.rng.normal(0, 0.01, size=image.shape).astype(np.float32)
        image = image[None]
        if self.augmenter is not None:
            image, masks = self.augmenter(image, masks, self.rng)
        return image, masks, case["available"]


def per_sample_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    available: torch.Tensor,
    dice: bool = True,
) -> torch.Tensor:
    """Segmentation loss per sample (B,): mean over the structures contoured in it of
    soft Dice + binary cross-entropy (or cross-entropy alone with ``dice=False``).

    logits, target: (B, C, X, Y, Z) or, for slices, (B, C, X, Y); available: (B, C) bool.
    """
    logits = logits.float()
    terms = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(2).mean(dim=2)
    if dice:
        terms = terms + DiceLoss(sigmoid=True, reduction="none")(logits, target).flatten(1)
    w = available.float()
    return (terms * w).sum(dim=1) / w.sum(dim=1).clamp(min=1)


def deep_supervision_loss(
    outputs: torch.Tensor | tuple[torch.Tensor, ...],
    target: torch.Tensor,
    available: torch.Tensor,
    dice: bool = True,
) -> torch.Tensor:
    """``per_sample_loss`` (B,) of the full-resolution logits, or with deep supervision
    (a tuple, full resolution first) the weighted sum over scales: weights 1/2^i,
    normalised, the target downsampled by nearest neighbour (nnU-Net)."""
    if isinstance(outputs, torch.Tensor):
        return per_sample_loss(outputs, target, available, dice)
    weights = [0.5**i for i in range(len(outputs))]
    total = sum(weights)
    loss = torch.zeros(target.shape[0], device=target.device)
    for w, logits in zip(weights, outputs):
        t = target
        if logits.shape[2:] != target.shape[2:]:
            t = F.interpolate(target, size=logits.shape[2:], mode="nearest")
        loss = loss + (w / total) * per_sample_loss(logits, t, available, dice)
    return loss


def masked_loss(logits: torch.Tensor, target: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """Dice + BCE over the available structures of the batch, a scalar.

    logits, target: (B, C, X, Y, Z); available: (B, C) bool.
    """
    losses = per_sample_loss(logits, target, available)
    counts = available.float().sum(dim=1)
    return (losses * counts).sum() / counts.sum().clamp(min=1)


def predicted_masks(
    network: torch.nn.Module, image: np.ndarray, config: dict, device: torch.device, bfloat16: bool = False
) -> np.ndarray:
    """(C, X, Y, Z) bool: the network's probabilities above ``config["threshold"]`` for a
    normalised image (X, Y, Z) on the model grid (sliding window of ``config["roi_size"]``,
    the config's test-time mirroring; ``bfloat16``: under bfloat16 autocast)."""
    prob = predict_probabilities(
        network,
        torch.as_tensor(image[None, None].astype(np.float32)),
        config["roi_size"],
        device,
        test_time_mirror(config),
        bfloat16,
    )[0].numpy()
    return prob > config["threshold"]


def validation_dice(network: torch.nn.Module, cases: list[dict], config: dict, device: torch.device) -> dict:
    """Mean Dice per structure over the cases where it is contoured, on the model grid,
    of the network's thresholded probabilities (sliding window, ``config["roi_size"]``).

    Returns {"per_structure": {name: Dice}, "mean": mean over structures}.
    """
    scores: dict[str, list[float]] = {s["name"]: [] for s in config["structures"]}
    for c in cases:
        masks = predicted_masks(network, c["image"], config, device)
        for i, s in enumerate(config["structures"]):
            if c["available"][i]:
                scores[s["name"]].append(dice(masks[i], c["masks"][i] > 0))
    per = {k: float(np.mean(v)) for k, v in scores.items() if v}
    return {"per_structure": per, "mean": float(np.mean(list(per.values())))}


def focus_mask(model: dict, focus: list[str] | None) -> np.ndarray:
    """(C,) bool over ``model["structures"]``: the structures named in ``focus`` (a
    specialist's, ``training.focus``), or all of them when it is None."""
    names = [s["name"] for s in model["structures"]]
    return np.array([focus is None or n in focus for n in names])


def warm_start(network: torch.nn.Module, path: Path) -> int:
    """Copy every tensor of the state dict at ``path`` whose name and shape match; returns how many.

    A tensor that differs in one dimension only (the output channels of the last layers
    of a network with more structures) gets the source's channels copied, so the
    structures the source was trained on start where the source left them, in the same
    order.

    Raises:
        TrainingConfigError: the file does not exist or no tensor matches.
    """
    if not path.exists():
        raise TrainingConfigError(f"init: {path} does not exist")
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
            if len(differ) == 1:  # out channels: dim 0 of a conv, 1 of a transposed conv
                part = [slice(None)] * v.ndim
                part[differ[0]] = slice(0, min(v.shape[differ[0]], own[k].shape[differ[0]]))
                copied[k] = own[k].clone()
                copied[k][tuple(part)] = v[tuple(part)]
    if not copied:
        raise TrainingConfigError(f"init: no tensor of {path} fits this network")
    network.load_state_dict(own | copied)
    return len(copied)


def make_optimizer(params, training: dict) -> torch.optim.Optimizer:
    """AdamW (weight decay 1e-5) or SGD with Nesterov momentum 0.99 (nnU-Net)."""
    if training["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=training["lr"], momentum=0.99, nesterov=True, weight_decay=3e-5)
    return torch.optim.AdamW(params, lr=training["lr"], weight_decay=1e-5)


def make_scheduler(opt: torch.optim.Optimizer, training: dict) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule over ``training.steps`` (see ``engine.train.config``)."""
    steps, lr = training["steps"], training["lr"]
    if training["schedule"] == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
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
    if training["schedule"] == "poly":
        return torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=steps, power=0.9)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


class SegmentationTrainer(Trainer):
    """Res-UNet + SE on OpenKBP patches: the hooks of ``Trainer`` for segmentation.

    Variants override ``sample_batch`` (what a step sees) and ``batch_loss`` (how the
    per-sample losses become one), as ``QAMTrainer`` does.
    """

    def setup(self) -> None:
        model, training = self.config["model"], self.training
        model.setdefault("name", self.name)
        cache = cache_dir(self.out.parent, model)
        cache.mkdir(parents=True, exist_ok=True)
        rois = case_rois(self.data)
        train_ids = [c for split in training["splits"] for c in load_split(self.data, split) if c in rois][
            : training["train_cases"]
        ]
        self.train_cases = [cache_case(self.data, c, model, cache) for c in train_ids]
        self.val_cases = [cache_case(self.data, c, model, cache) for c in load_split(self.data, "val") if c in rois]
        focus = focus_mask(model, training["focus"])
        if training["focus"] is not None:
            self.train_cases = [c | {"available": c["available"] & focus} for c in self.train_cases]
            self.train_cases = [c for c in self.train_cases if c["available"].any()]
        self.prepare_cases()
        freq = np.array([sum(c["available"][i] for c in self.train_cases) for i in range(len(model["structures"]))])
        weights = (freq.max() / np.maximum(freq, 1)) ** float(training["rare_power"]) * focus
        augmenter = None
        if training["augment"] is not None:
            augmenter = PatchAugmenter(training["augment"], [s["name"] for s in model["structures"]])
        self.sampler = PatchSampler(
            self.train_cases,
            training["patch"],
            training["fg_fraction"],
            weights.astype(float),
            self.seed,
            augmenter,
        )
        self.samplers = [self.sampler]
        network = build_network(model)
        if self.config.get("init"):
            copied = warm_start(network, Path(self.config["init"]))
            print(f"{self.name}: {copied} tensors copied from {self.config['init']}", flush=True)
        self.modules = {"network": network}
        self.optimizers = {"network": make_optimizer(network.parameters(), training)}
        self.scheduler = make_scheduler(self.optimizers["network"], training)
        self.use_dice = training["loss"] == "dice+ce"

    def prepare_cases(self) -> None:
        """Hook: change the training cases after loading (label noise)."""

    def sample_batch(self) -> dict:
        """Hook: one batch as tensors on the device: x (B, 1, p, p, p), y (B, C, p, p, p)
        float, available (B, C) bool, and the index of each sample's case."""
        items, cases = [], []
        for _ in range(self.batch):
            items.append(self.sampler.sample())
            cases.append(self.sampler.last_index)
        return {
            "x": torch.as_tensor(np.stack([i[0] for i in items])).to(self.device),
            "y": torch.as_tensor(np.stack([i[1] for i in items])).float().to(self.device),
            "available": torch.as_tensor(np.stack([i[2] for i in items])).to(self.device),
            "cases": cases,
        }

    def batch_loss(self, batch: dict, outputs, losses: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Hook: the scalar to back-propagate from the per-sample losses (B,), and extra
        terms to log. Plain training: the mean."""
        return losses.mean(), {}

    def train_step(self) -> dict[str, float]:
        batch = self.sample_batch()
        with self.autocast():
            outputs = self.network(batch["x"])
        losses = deep_supervision_loss(outputs, batch["y"], batch["available"], self.use_dice)
        loss, terms = self.batch_loss(batch, outputs, losses)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in self.optimizers.values():
            opt.step()
        return {"loss": float(loss.detach()), **terms}

    def validate(self) -> dict:
        val = validation_dice(self.network, self.val_cases, self.config["model"], self.device)
        if self.training["focus"] is None:
            return val
        # A specialist is chosen by its own structures: the others are not trained.
        focus = [val["per_structure"][f] for f in self.training["focus"] if f in val["per_structure"]]
        return val | {"mean_all": val["mean"], "mean": float(np.mean(focus))}

    def finish(self) -> dict:
        from engine.train.evaluate import evaluate

        summary = {
            "name": self.name,
            "seed": self.seed,
            "best_val_mean_dice": round(self.best, 4),
            "train_cases": len(self.train_cases),
            "hours": round(self.hours, 3),
        } | self.extra_metrics()
        if not self.training["evaluate_test"]:
            return summary
        network = self.network
        network.load_state_dict(torch.load(self.out / "best.pt", map_location="cpu", weights_only=True))
        loaded = LoadedModel(
            self.name,
            network.eval(),
            copy.deepcopy(self.config["model"]),
            sha256_of(self.out / "best.pt"),
            self.device,
        )
        return summary | {"evaluation": evaluate(loaded, self.data, self.evaluate_split)}

    def extra_metrics(self) -> dict:
        """Hook: more entries for ``metrics.json``."""
        return {}

    evaluate_split = "test"
