"""Pick-and-Learn (Zhu, Shi, Wu, MICCAI 2019) as a variant of ``SegmentationTrainer``.

* ``noise`` in the configuration: a fraction of the training cases has its labels
  corrupted by the documented protocol (``engine.train.label_noise``); the corrupted
  cases and radii go to ``corruption.json``.
* ``qam``: a quality awareness module (``engine.models.qam``) scores each (image, label)
  sample; ``lambda`` (a number) bounds the scores by the overfitting control module
  ``lambda * tanh``, null leaves them raw; a softmax over the batch turns them into the
  weights of the per-sample losses, back-propagated into both networks (two optimisers).
* ``qam.corrupt_copies: "small"|"large"`` trains the QAM alone as a contour-quality
  critic: per sample, one contoured structure with its label and a copy corrupted by
  the noise protocol, each scored by the network's detached loss on that structure;
  the network trains as plain (``python -m engine audit`` uses the critic).

Logged per step: the mean QAM weight of clean and of corrupted samples, relative to
uniform (1 means "as plain training").
"""

from __future__ import annotations

import json

import numpy as np
import torch

from engine.models.qam import QualityAwarenessModule, sample_weights, weighted_loss
from engine.train.label_noise import RANGES_MM, corrupt_masks, noisy_cases
from engine.train.segmentation import SegmentationTrainer, per_sample_loss


def one_structure_pairs(
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
        present = [c for c in range(y.shape[1]) if available[b, c] and bool(y[b, c].any())]
        options = present or [c for c in range(y.shape[1]) if available[b, c]]
        if not options:
            continue
        c = int(rng.choice(options))
        chosen[b, c] = True
        mask = y[b, c : c + 1].cpu().numpy()
        noisy[b, c] = torch.as_tensor(corrupt_masks(mask, spacing_mm, RANGES_MM[radius_range], rng)[0][0]).to(y)
    return noisy, chosen


class QAMTrainer(SegmentationTrainer):
    """Label noise and QAM sample weighting over ``SegmentationTrainer``."""

    def prepare_cases(self) -> None:
        noise = self.config.get("noise") or {}
        seed = int(noise.get("seed", 0))
        ids = [c["case"] for c in self.train_cases]
        self.corrupted = noisy_cases(ids, float(noise.get("fraction", 0.0)), seed)
        log = {}
        for k, case in enumerate(self.train_cases):
            if case["case"] in self.corrupted:
                rng = np.random.default_rng([seed, k])
                case["masks"], record = corrupt_masks(
                    case["masks"],
                    self.config["model"]["spacing_mm"],
                    RANGES_MM[noise["range"]],
                    rng,
                    case["available"],
                )
                log[case["case"]] = [vars(r) for r in record]
        (self.out / "corruption.json").write_text(json.dumps(log, indent=1))
        self.is_corrupted = np.array([c["case"] in self.corrupted for c in self.train_cases])

    def setup(self) -> None:
        super().setup()
        self.qam_config = self.config.get("qam")
        if self.qam_config:
            qam = QualityAwarenessModule(1 + len(self.config["model"]["structures"]))
            self.modules["qam"] = qam
            self.optimizers["qam"] = torch.optim.AdamW(qam.parameters(), lr=float(self.qam_config.get("lr", 1e-3)))

    def batch_loss(self, batch: dict, outputs, losses: torch.Tensor) -> tuple[torch.Tensor, dict]:
        flags = [bool(self.is_corrupted[k]) for k in batch["cases"]]
        if not self.qam_config:
            return losses.mean(), {}
        logits = outputs[0] if isinstance(outputs, tuple) else outputs
        x, y, a = batch["x"], batch["y"], batch["available"]
        critic = self.qam_config.get("corrupt_copies")
        qx, qy, qa, qlosses, qflags = x, y, a, losses, flags
        if critic:
            noisy, one = one_structure_pairs(y, a, self.config["model"]["spacing_mm"], critic, self.sampler.rng)
            qx, qy, qa = torch.cat([x, x]), torch.cat([y, noisy]), torch.cat([one, one])
            qlosses = per_sample_loss(torch.cat([logits, logits]), qy, qa, self.use_dice)
            qflags = flags + [True] * len(flags)
        labels = qy * qa[:, :, None, None, None].float()
        qweights = sample_weights(self.modules["qam"](torch.cat([qx, labels], dim=1)), self.qam_config.get("lambda"))
        if critic:
            # The critic learns from the losses without steering the network.
            loss = losses.mean() + weighted_loss(qlosses.detach(), qweights)
        else:
            loss = weighted_loss(losses, qweights)
        relative = (qweights.detach().cpu() * len(qflags)).tolist()
        clean = [w for w, f in zip(relative, qflags) if not f]
        corrupted = [w for w, f in zip(relative, qflags) if f]
        return loss, {
            "weight_clean": float(np.mean(clean)) if clean else None,
            "weight_corrupted": float(np.mean(corrupted)) if corrupted else None,
        }

    def extra_metrics(self) -> dict:
        return {"corrupted_cases": len(self.corrupted)}
