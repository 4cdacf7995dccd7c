"""Pick-and-Learn as the paper ran it: 2D images, real batches (Zhu, Shi and Wu, MICCAI 2019).

A run of ``"kind": "slices2d"`` trains a 2D Res-UNet + SE (``spatial_dims=2``, 3x3
kernels) on the axial slices of ``engine.train.slices``. The label noise is the thesis's
protocol in pixels: ``noise.fraction`` of the training images (slices) is chosen with a
fixed seed, and every structure of a chosen image is dilated or eroded (a fair coin per
structure) by a whole number of pixels drawn per structure from 1-8 ("small") or 5-13
("large") (``engine.train.label_noise``); validation and test are never corrupted. With
``qam``, a 2D QAM scores each (image, labels) sample of the batch, ``lambda * tanh``
bounds the scores when ``lambda`` is a number (the OCM), a softmax over the batch turns
them into weights, and the weighted loss trains both networks, each with its own
optimiser. Logged per step: the mean weight, relative to uniform, of clean and of
corrupted images. Scores: Dice per structure per patient, on the stack of that patient's
slices, averaged over patients.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from engine.metrics import dice
from engine.models.qam import QualityAwarenessModule, sample_weights, weighted_loss
from engine.models.res_se_unet import ResSEUNet
from engine.train.label_noise import RANGES_MM, RANGES_PX, corrupt_masks
from engine.train.segmentation import make_optimizer, make_scheduler, per_sample_loss
from engine.train.slices import load_slices
from engine.train.trainer import Trainer


class BatchSampler:
    """Batches of distinct image indices, drawn with ``rng`` (saved with the run)."""

    def __init__(self, n: int, seed: int):
        self.n, self.rng = n, np.random.default_rng(seed)

    def sample(self, batch: int) -> np.ndarray:
        return self.rng.choice(self.n, size=min(batch, self.n), replace=False)


def slice_dice(network: torch.nn.Module, slices: dict, device: torch.device, threshold: float = 0.5) -> dict:
    """Dice per structure, per patient on the stack of its slices, then the mean over
    patients: {"per_structure": {index: Dice}, "mean": mean over structures}."""
    preds = []
    with torch.no_grad():
        for start in range(0, len(slices["image"]), 32):
            x = torch.as_tensor(slices["image"][start : start + 32].astype(np.float32))
            preds.append((torch.sigmoid(network(x.to(device))) > threshold).cpu().numpy())
    pred = np.concatenate(preds)
    truth = slices["masks"] > 0
    per: dict[int, list[float]] = {}
    for k in np.unique(slices["case"]):
        rows = slices["case"] == k
        for c in range(truth.shape[1]):
            per.setdefault(c, []).append(dice(pred[rows, c], truth[rows, c]))
    means = {c: float(np.mean(v)) for c, v in per.items()}
    return {"per_structure": means, "mean": float(np.mean(list(means.values())))}


class SliceTrainer(Trainer):
    """The 2D experiment's hooks (plain, QAM or QAM+OCM, with or without label noise)."""

    def setup(self) -> None:
        model, training = self.config["model"], self.training
        structures = model["structures"]
        cache = self.out.parent / "cache-slices"
        load = lambda splits: load_slices(  # noqa: E731
            self.data, splits, structures, model["window_hu"], cache
        )
        self.train_set, self.val_set = load(training["splits"]), load(["val"])
        self.names = [s["name"] for s in structures]
        self.corrupt_training_images()
        self.sampler = BatchSampler(len(self.train_set["image"]), self.seed)
        self.samplers = [self.sampler]
        network = ResSEUNet(
            1,
            len(structures),
            channels=model["channels"],
            residual=model.get("residual", True),
            se=model.get("se", True),
            spatial_dims=2,
        )
        self.modules = {"network": network}
        self.optimizers = {"network": make_optimizer(network.parameters(), training)}
        self.scheduler = make_scheduler(self.optimizers["network"], training)
        self.qam_config = self.config.get("qam")
        if self.qam_config:
            qam = QualityAwarenessModule(1 + len(structures), channels=(16, 32, 64, 64), spatial_dims=2)
            self.modules["qam"] = qam
            self.optimizers["qam"] = torch.optim.AdamW(qam.parameters(), lr=float(self.qam_config.get("lr", 1e-3)))
        self.use_dice = training["loss"] == "dice+ce"

    def corrupt_training_images(self) -> None:
        noise = self.config.get("noise") or {}
        n = len(self.train_set["image"])
        fraction, seed = float(noise.get("fraction", 0.0)), int(noise.get("seed", 0))
        chosen = np.random.default_rng(seed).permutation(n)[: round(fraction * n)]
        self.is_corrupted = np.zeros(n, dtype=bool)
        self.is_corrupted[chosen] = True
        record = {}
        in_mm = noise.get("units", "px") == "mm"
        for i in chosen:
            rng = np.random.default_rng([seed, int(i)])
            # Pixels: the thesis's whole-pixel radii. Millimetres: the 3D protocol's radii on
            # each case's own pixel spacing, for slices whose organs are a few pixels across.
            spacing = tuple(self.train_set["spacing"][self.train_set["case"][i]]) if in_mm else (1.0, 1.0)
            self.train_set["masks"][i], done = corrupt_masks(
                self.train_set["masks"][i],
                spacing,
                (RANGES_MM if in_mm else RANGES_PX)[noise["range"]],
                rng,
                whole_units=not in_mm,
            )
            record[int(i)] = [vars(d) for d in done]
        (self.out / "corruption.json").write_text(json.dumps(record))

    def train_step(self) -> dict[str, float | None]:
        idx = self.sampler.sample(self.batch)
        x = torch.as_tensor(self.train_set["image"][idx].astype(np.float32)).to(self.device)
        y = torch.as_tensor(self.train_set["masks"][idx]).float().to(self.device)
        every = torch.ones(y.shape[:2], dtype=torch.bool, device=self.device)
        with self.autocast():
            logits = self.network(x)
        losses = per_sample_loss(logits, y, every, self.use_dice)
        if self.qam_config:
            weights = sample_weights(self.modules["qam"](torch.cat([x, y], dim=1)), self.qam_config.get("lambda"))
        else:
            weights = torch.full_like(losses, 1.0 / len(losses))
        loss = weighted_loss(losses, weights)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in self.optimizers.values():
            opt.step()
        relative = weights.detach().cpu().numpy() * len(idx)
        flags = self.is_corrupted[idx]
        return {
            "loss": float(loss.detach()),
            "weight_clean": float(relative[~flags].mean()) if (~flags).any() else None,
            "weight_corrupted": float(relative[flags].mean()) if flags.any() else None,
        }

    def _named(self, scores: dict) -> dict:
        return {
            "per_structure": {self.names[c]: d for c, d in scores["per_structure"].items()},
            "mean": scores["mean"],
        }

    def validate(self) -> dict:
        return self._named(slice_dice(self.network, self.val_set, self.device))

    def finish(self) -> dict:
        self.network.load_state_dict(torch.load(self.out / "best.pt", map_location="cpu", weights_only=True))
        self.network.eval()
        metrics = {
            "name": self.name,
            "seed": self.seed,
            "best_val_mean_dice": round(self.best, 4),
            "train_images": len(self.train_set["image"]),
            "corrupted_images": int(self.is_corrupted.sum()),
            "hours": round(self.hours, 3),
        }
        if self.training["evaluate_test"]:
            test = load_slices(
                self.data,
                ["test"],
                self.config["model"]["structures"],
                self.config["model"]["window_hu"],
                self.out.parent / "cache-slices",
            )
            scores = self._named(slice_dice(self.network, test, self.device))
            metrics["evaluation"] = {
                "split": "test",
                "n_cases": len(test["cases"]),
                "mean_dice": round(scores["mean"], 4),
                "per_structure": {k: {"dice_mean": round(v, 4)} for k, v in scores["per_structure"].items()},
            }
        return metrics
