"""Training of the Res-UNet + SE structure models on OpenKBP (multi-label, partial labels).

Loss per sample and structure: soft Dice + binary cross-entropy on sigmoid outputs
(Milletari et al., V-Net, 2016; MONAI ``DiceLoss``), counted only for structures
contoured in that case: OpenKBP leaves many organs uncontoured, and an uncontoured
organ is unknown, not background. Learning rate: one cycle (Smith, 2018), AdamW.
Patches are centred on a contoured structure with probability ``fg_fraction``,
rare structures (oesophagus, larynx) drawn more often.

Resumable: ``last.pt`` in the run directory holds network, optimiser, scheduler and step.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from engine.data_openkbp import case_rois, load_case, load_split, masks_to_bitfield
from engine.infer.grid import image_to_model_grid, labels_to_model_grid
from engine.infer.predict import predict_probabilities
from engine.models.registry import build_network


def _cache_case(data: Path, case: str, config: dict, cache: Path) -> dict:
    path = cache / f"{case}.npz"
    if not path.exists():
        ct, masks, available = load_case(data, case, config["structures"])
        img = image_to_model_grid(
            ct, config["spacing_mm"], config["window_hu"], config["axcodes"]
        )
        bits = labels_to_model_grid(
            masks_to_bitfield(masks, ct.affine), config["spacing_mm"], config["axcodes"]
        )
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
        masks = np.stack(
            [(bits >> i) & 1 for i in range(len(config["structures"]))]
        ).astype(np.uint8)
        return {
            "case": case,
            "image": z["image"],
            "masks": masks,
            "available": z["available"],
        }


def _pad_to(a: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    pad = [(0, 0)] * (a.ndim - 3) + [
        (0, max(0, s - d)) for s, d in zip(size, a.shape[-3:])
    ]
    return np.pad(a, pad)


class PatchSampler:
    """Random (image, masks, available) patches of ``patch`` voxels from cached cases."""

    def __init__(
        self,
        cases: list[dict],
        patch: int,
        fg_fraction: float,
        weights: np.ndarray,
        seed: int,
    ):
        self.cases, self.patch, self.fg, self.weights = (
            cases,
            patch,
            fg_fraction,
            weights,
        )
        self.rng = np.random.default_rng(seed)
        self.fg_voxels = [
            [np.argwhere(m) if m.any() else None for m in c["masks"]] for c in cases
        ]

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = int(self.rng.integers(len(self.cases)))
        self.last_index = k  # which case the patch came from (clean or corrupted)
        case, p = self.cases[k], self.patch
        shape = case["image"].shape
        centre = np.array([self.rng.integers(s) for s in shape])
        present = [i for i, v in enumerate(self.fg_voxels[k]) if v is not None]
        if present and self.rng.random() < self.fg:
            w = self.weights[present] / self.weights[present].sum()
            s = present[int(self.rng.choice(len(present), p=w))]
            vox = self.fg_voxels[k][s]
            centre = vox[self.rng.integers(len(vox))] + self.rng.integers(
                -p // 4, p // 4 + 1, size=3
            )
        start = [
            int(np.clip(c - p // 2, 0, max(0, s - p))) for c, s in zip(centre, shape)
        ]
        sl = tuple(slice(b, b + p) for b in start)
        image = _pad_to(case["image"][sl].astype(np.float32), (p, p, p))
        masks = _pad_to(case["masks"][(slice(None), *sl)], (p, p, p))
        # intensity augmentation: contrast and brightness jitter, noise
        image = image * self.rng.uniform(0.9, 1.1) + self.rng.uniform(-0.05, 0.05)
        image = image + self.rng.normal(0, 0.01, size=image.shape).astype(np.float32)
        return image[None], masks, case["available"]


def save_resumable(out: Path, state: dict) -> None:
    """Write ``last.pt`` under a temporary name then rename: a kill never leaves half a checkpoint."""
    torch.save(state, out / "last.tmp")
    (out / "last.tmp").replace(out / "last.pt")


def _log(out: Path, record: dict) -> None:
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def masked_loss(
    logits: torch.Tensor, target: torch.Tensor, available: torch.Tensor
) -> torch.Tensor:
    """Dice + BCE over available structures.

    logits, target: (B, C, X, Y, Z); available: (B, C) bool. Returns a scalar.
    """
    dice = DiceLoss(sigmoid=True, reduction="none")(logits, target).flatten(1)  # (B, C)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(
        dim=(2, 3, 4)
    )
    w = available.float()
    return ((dice + bce) * w).sum() / w.sum().clamp(min=1)


def _validate(network, cases, config, device) -> dict:
    network.eval()
    scores: dict[str, list[float]] = {s["name"]: [] for s in config["structures"]}
    for c in cases:
        prob = predict_probabilities(
            network,
            torch.as_tensor(c["image"][None, None].astype(np.float32)),
            config["roi_size"],
            device,
        )[0].numpy()
        for i, s in enumerate(config["structures"]):
            if c["available"][i]:
                p, t = prob[i] > config["threshold"], c["masks"][i] > 0
                denom = p.sum() + t.sum()
                scores[s["name"]].append(
                    float(2 * (p & t).sum() / denom) if denom else 1.0
                )
    network.train()
    per = {k: float(np.mean(v)) for k, v in scores.items() if v}
    return {"per_structure": per, "mean": float(np.mean(list(per.values())))}


def train(
    config: dict,
    data: Path,
    out: Path,
    steps: int,
    patch: int = 96,
    batch: int = 2,
    lr: float = 2e-3,
    fg_fraction: float = 0.8,
    val_every: int = 300,
    seed: int = 0,
    threads: int | None = None,
) -> Path:
    """Train (or resume) a model; returns the path of the best checkpoint by val mean Dice."""
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    (out / "config.json").write_text(json.dumps(config, indent=1))
    cache = out.parent / f"cache-{config['name']}"
    cache.mkdir(exist_ok=True)
    rois = case_rois(data)
    t0 = time.time()
    train_cases = [
        _cache_case(data, c, config, cache)
        for c in load_split(data, "train")
        if c in rois
    ]
    val_cases = [
        _cache_case(data, c, config, cache)
        for c in load_split(data, "val")
        if c in rois
    ]
    print(
        f"cached {len(train_cases)} train / {len(val_cases)} val cases in {time.time() - t0:.0f} s",
        flush=True,
    )
    freq = np.array(
        [
            sum(c["available"][i] for c in train_cases)
            for i in range(len(config["structures"]))
        ]
    )
    weights = (freq.max() / np.maximum(freq, 1)).astype(float)
    sampler = PatchSampler(train_cases, patch, fg_fraction, weights, seed)

    network = build_network(config).to(device)
    opt = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=steps, pct_start=0.1
    )
    step, best = 0, -1.0
    if (out / "last.pt").exists():
        state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
        network.load_state_dict(state["network"])
        opt.load_state_dict(state["optimizer"])
        if state["scheduler"].get("total_steps") == steps:
            sched.load_state_dict(state["scheduler"])
        else:  # resumed with a different step budget: replay the new schedule up to ``step``
            for _ in range(state["step"]):
                sched.step()
        step, best = state["step"], state["best"]
        sampler.rng = np.random.default_rng(seed + step)
        print(f"resumed at step {step}, best val Dice {best:.3f}", flush=True)
    network.train()
    t_last = time.time()
    while step < steps:
        items = [sampler.sample() for _ in range(batch)]
        x = torch.as_tensor(np.stack([i[0] for i in items])).to(device)
        y = torch.as_tensor(np.stack([i[1] for i in items])).float().to(device)
        a = torch.as_tensor(np.stack([i[2] for i in items])).to(device)
        loss = masked_loss(network(x), y, a)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if step % 20 == 0:
            rec = {
                "step": step,
                "loss": float(loss),
                "lr": sched.get_last_lr()[0],
                "s_per_step": (time.time() - t_last) / 20,
            }
            t_last = time.time()
            _log(out, rec)
        if step % val_every == 0 or step == steps:
            val = _validate(network, val_cases, config, device)
            _log(out, {"step": step, "val": val})
            print(
                f"step {step}: val mean Dice {val['mean']:.3f} {val['per_structure']}",
                flush=True,
            )
            if val["mean"] > best:
                best = val["mean"]
                torch.save(network.state_dict(), out / "best.pt")
            state = {
                "network": network.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "step": step,
                "best": best,
            }
            save_resumable(out, state)
    return out / "best.pt"
