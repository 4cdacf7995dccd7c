"""The audit's contour-quality critic, trained as Pick-and-Learn trained its QAM: on 2D
images in real batches (Zhu, Shi and Wu, MICCAI 2019; docs/noisy-labels.md).

A run of ``"kind": "critic2d"`` reads the cases of a 3D model's grid (the model's
``spacing_mm``, ``window_hu`` and ``axcodes``, the cache the segmentation runs share)
and cuts, for every contoured structure of every training case, the axial slices through
it as ``training.patch`` x ``training.patch`` crops centred in-plane on the contour
(``engine.infer.critic.axial_crops``, as the audit cuts them). Each step draws
``training.batch`` crops and makes a corrupted copy of each one's contour (dilated or
eroded in mm by the noise protocol, ``qam.corrupt_copies``: "small", "large" or "both",
a range drawn per copy). A 2D Res-UNet + SE learns to segment the crops (plain training
on the clean labels); its detached loss on the scored structure, taken relative to the
mean over the two copies of the same image, weighs each of the 2 x batch (image,
contour) samples, and the QAM (``qam.channels``, ``spatial_dims=2``) learns, through the
OCM bound and a softmax over the whole batch, to give the weight to the samples the
network fits best: the clean contours. (With raw losses the QAM learned to rank images,
large organs above thin ones, and ranked corrupted 3D contours above clean ones: val ROC
AUC 0.42-0.46 at steps 250-500, docs/noisy-labels.md.)

``qam.teacher: "protocol"`` replaces the network's losses by what the protocol knows: a
corrupted copy's loss is 1, a clean one's 0, so the same softmax over the batch moves the
weight to the clean copies of every image at once (no segmentation network is trained).
Pick-and-Learn needs the network's losses because it does not know which training labels
are noisy; a critic trained on copies it corrupted itself does know.

Validation and the final figures score whole 3D contours the way ``python -m engine
audit`` does (``engine.infer.critic.qam_score``: the mean over a contour's slices),
clean and corrupted by the 3D protocol in mm (``engine.train.label_noise``), and report
the ROC AUC (clean above corrupted; MONAI ``compute_roc_auc``); the best checkpoint is
the one with the highest validation AUC. ``finish`` writes ``qam_auc.json`` (test AUC,
and the threshold chosen on val), which ``python -m engine publish --critic`` attaches
to a model's card.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_roc_auc

from engine.infer.critic import Critic, contour_window, crop_slices, qam_score
from engine.models.qam import QualityAwarenessModule, sample_weights, weighted_loss
from engine.models.registry import sha256_of
from engine.models.res_se_unet import ResSEUNet
from engine.train.label_noise import RANGES_MM, corrupt_masks
from engine.train.openkbp import case_rois, load_split
from engine.train.pick_and_learn_2d import BatchSampler
from engine.train.segmentation import cache_case, cache_dir, make_optimizer, make_scheduler, per_sample_loss
from engine.train.trainer import Trainer

# At most this many slices of one contour enter the training set (evenly spaced), so the
# long targets (PTVs, the spinal cord) do not crowd out the small organs.
MAX_SLICES_PER_CONTOUR = 16
# Share of sound contours the audit may call implausible: the threshold is the score
# under which this share of the clean validation contours falls.
CLEAN_FLAGGED = 0.10
DEFAULT_QAM_CHANNELS = (16, 32, 64, 64)


def corrupt_contour(
    mask: np.ndarray, spacing_mm: list[float], radius_range: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """One structure's mask (X, Y[, Z]) dilated or eroded by the noise protocol
    (``engine.train.label_noise.corrupt_masks``), computed in the contour's bounding box
    grown by the largest radius, which gives the same result as on the whole grid."""
    where = np.argwhere(mask > 0)
    if len(where) == 0:
        return mask.copy()
    margin = [int(np.ceil(radius_range[1] / s)) + 1 for s in spacing_mm]
    box = tuple(
        slice(max(lo - m, 0), min(hi + m + 1, n))
        for lo, hi, m, n in zip(where.min(axis=0), where.max(axis=0), margin, mask.shape, strict=True)
    )
    out = np.zeros_like(mask)
    out[box] = corrupt_masks(mask[box][None], spacing_mm, radius_range, rng)[0][0]
    return out


def contour_crops(cases: Iterable[dict], patch: int) -> dict:
    """The training crops of ``cases`` (``cache_case`` dicts on a model grid): for every
    contoured structure, up to ``MAX_SLICES_PER_CONTOUR`` of its axial slices (evenly
    spaced), cut with the audit's window (``engine.infer.critic.contour_window``).

    Returns {"image": (N, patch, patch) float16, "bits": (N, patch, patch) int16 (bit c set
    where structure c is, every structure of the case, for the segmentation network;
    ``unpack_bits``), "structure": (N,)
    the index of the contour the crop is cut around, "available": (N, C) bool (contoured
    in that case)}.
    """
    images, masks, owner, available = [], [], [], []
    for case in cases:
        for c in range(len(case["masks"])):
            if not case["available"][c] or not case["masks"][c].any():
                continue
            centre, slices = contour_window(case["masks"][c])
            keep = np.unique(np.linspace(0, len(slices) - 1, min(len(slices), MAX_SLICES_PER_CONTOUR)).round())
            chosen = slices[keep.astype(int)]
            images.append(crop_slices(case["image"], centre, chosen, patch).astype(np.float16))
            crops = crop_slices(case["masks"], centre, chosen, patch).astype(np.int16)  # (S, C, patch, patch)
            masks.append((crops << np.arange(crops.shape[1], dtype=np.int16)[None, :, None, None]).sum(axis=1))
            owner.append(np.full(len(chosen), c, dtype=np.int16))
            available.append(np.repeat(np.asarray(case["available"], bool)[None], len(chosen), axis=0))
    return {
        "image": np.concatenate(images),
        "bits": np.concatenate(masks).astype(np.int16),
        "structure": np.concatenate(owner),
        "available": np.concatenate(available),
    }


def relative_to_image(clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
    """The losses (B,) of each image's clean and corrupted copy -> (2B,) [clean; corrupted],
    each minus the mean of its image's two. Raw losses rank images (a large organ is
    fitted better than a thin one, whatever its contour); a critic must rank contours of
    the same image, and the softmax over the batch then sees only that."""
    mean = (clean + corrupted) / 2
    return torch.cat([clean - mean, corrupted - mean])


def unpack_bits(bits: np.ndarray, n: int) -> np.ndarray:
    """(N, X, Y) int16 bitfields -> (N, n, X, Y) uint8 masks."""
    return ((bits[:, None] >> np.arange(n, dtype=np.int16)[None, :, None, None]) & 1).astype(np.uint8)


# (case index, image, mask, channel) -> a score, or any value holding several (a tuple of
# checks), or None when the contour cannot be scored.
ContourScorer = Callable[[int, np.ndarray, np.ndarray, int], Any]


def critic_scorer(critic: Critic, n_structures: int) -> ContourScorer:
    """``score_contours``'s scorer for a QAM: (case index, image, mask, channel) -> its
    bounded score (``engine.infer.critic.qam_score``)."""
    return lambda k, image, mask, c: qam_score(critic, image, mask, c, n_structures)


def score_contours(score: ContourScorer, cases: list[dict], spacing_mm: list[float], seed: int) -> list[dict]:
    """One row per contoured structure of ``cases``: its score clean, and after one
    corruption by each range of the 3D noise protocol (``RANGES_MM``, drawn with
    ``seed`` and the case's index, so every scorer is scored on the same contours).

    ``score(k, image (X, Y, Z), mask (X, Y, Z), channel)``: the higher, the more plausible
    the contour of structure ``channel`` on ``cases[k]`` (``critic_scorer``, or another
    check such as the agreement with a model); None where it cannot score the contour.
    The corruption is in mm on the case's ``spacing_mm`` where the case gives one, else on
    ``spacing_mm``. Row: {"case", "structure" (index), "clean", "small", "large"}; a
    corrupted score is None when erosion left nothing (or the scorer gave None); a
    structure whose clean contour cannot be scored has no row.
    """
    rows = []
    for k, case in enumerate(cases):
        rng = np.random.default_rng([seed, k])
        image = case["image"].astype(np.float32)
        spacing = case.get("spacing_mm", spacing_mm)
        for c in range(len(case["masks"])):
            mask = case["masks"][c]
            if not case["available"][c] or not mask.any():
                continue
            row = {"case": case["case"], "structure": c, "clean": score(k, image, mask, c)}
            for name, radius in RANGES_MM.items():
                noisy = corrupt_contour(mask, spacing, radius, rng)
                row[name] = score(k, image, noisy, c) if noisy.any() else None
            if row["clean"] is not None:
                rows.append(row)
    return rows


def _pairs(rows: list[dict], ranges: tuple[str, ...]) -> tuple[list[float], list[int]]:
    scores, truth = [], []
    for r in rows:
        scores.append(r["clean"])
        truth.append(1)
        for name in ranges:
            if r[name] is not None:
                scores.append(r[name])
                truth.append(0)
    return scores, truth


def roc_auc(rows: list[dict], ranges: tuple[str, ...] = tuple(RANGES_MM)) -> float:
    """The probability that a clean contour scores above a corrupted one (ROC AUC)."""
    scores, truth = _pairs(rows, ranges)
    return float(compute_roc_auc(torch.tensor(scores), torch.tensor(truth)))


def clean_percentile_threshold(rows: list[dict], false_flags: float = CLEAN_FLAGGED) -> float:
    """The score under which ``false_flags`` of the clean contours fall: the audit then
    calls about that share of sound contours implausible, and catches what it can."""
    return float(np.quantile([r["clean"] for r in rows], false_flags))


def at_threshold(rows: list[dict], threshold: float) -> dict:
    """The shares of clean and of corrupted contours in ``rows`` that score below ``threshold``."""
    scores, truth = map(np.asarray, _pairs(rows, tuple(RANGES_MM)))
    return {
        "clean_called_implausible": round(float(np.mean(scores[truth == 1] < threshold)), 4),
        "corrupted_called_implausible": round(float(np.mean(scores[truth == 0] < threshold)), 4),
    }


def calibration(rows_val: list[dict], rows_test: list[dict], names: list[str]) -> dict:
    """The figures a card records for a critic.

    Over all structures: the test ROC AUC per range and both, the threshold chosen on val
    and the shares of clean and corrupted test contours under it. Per structure (a
    critic judges a parotid better than a PTV, whose border the image does not show, and
    its scores sit at another level for each): the same, the threshold from that
    structure's clean val contours, and its val AUC, which decides whether the audit acts
    on its score (tuned on val, reported on test).
    """
    threshold = clean_percentile_threshold(rows_val)
    per_structure = {}
    for c, name in enumerate(names):
        val = [r for r in rows_val if r["structure"] == c]
        test = [r for r in rows_test if r["structure"] == c]
        if len(val) >= 2 and test:
            own = clean_percentile_threshold(val)
            per_structure[name] = {
                "roc_auc_val": round(roc_auc(val), 4),
                "roc_auc_test": round(roc_auc(test), 4),
                "threshold_val": round(own, 4),
                "n_val": len(val),
                "n_test": len(test),
                "test_at_threshold": at_threshold(test, own),
            }
    return {
        "n_test_contours": len(rows_test),
        "roc_auc_test": {name: round(roc_auc(rows_test, (name,)), 4) for name in RANGES_MM}
        | {"both": round(roc_auc(rows_test), 4)},
        "threshold_val": round(threshold, 4),
        "threshold_rule": f"{CLEAN_FLAGGED:.0%} of the clean validation contours score below it",
        "test_at_threshold": at_threshold(rows_test, threshold),
        "per_structure": per_structure,
    }


class CriticTrainer(Trainer):
    """The hooks of ``Trainer`` for a 2D critic run (see the module doc). The checkpointed
    "network" is the QAM; "segmenter" is the 2D network whose losses teach it."""

    val_metric = "ROC AUC"

    def setup(self) -> None:
        model, training = self.config["model"], self.training
        qam = self.config["qam"]
        self.names = [s["name"] for s in model["structures"]]
        self.patch = int(training["patch"])
        self.lam = float(qam.get("lambda") or 2.0)
        self.qam_channels = tuple(qam.get("channels", DEFAULT_QAM_CHANNELS))
        self.ranges = list(RANGES_MM) if qam["corrupt_copies"] == "both" else [qam["corrupt_copies"]]
        self.train_set = contour_crops((c for s in training["splits"] for c in self.cases(s)), self.patch)
        self.val_cases = list(self.cases("val"))
        self.sampler = BatchSampler(len(self.train_set["image"]), self.seed)
        self.samplers = [self.sampler]
        n = len(self.names)
        critic = QualityAwarenessModule(1 + n, channels=self.qam_channels, spatial_dims=2)
        self.modules = {"network": critic}
        self.optimizers = {"network": torch.optim.AdamW(critic.parameters(), lr=float(qam.get("lr", 1e-3)))}
        self.teacher = qam.get("teacher", "network")
        if self.teacher == "network":
            segmenter = ResSEUNet(1, n, channels=model["channels"], spatial_dims=2)
            self.modules["segmenter"] = segmenter
            self.optimizers["segmenter"] = make_optimizer(segmenter.parameters(), training)
            self.scheduler = make_scheduler(self.optimizers["segmenter"], training)
        else:
            self.scheduler = make_scheduler(self.optimizers["network"], {**training, "lr": float(qam.get("lr", 1e-3))})

    def cases(self, split: str) -> Iterator[dict]:
        """The cases of ``split`` on the model grid, read one at a time from the shared cache."""
        model = self.config["model"]
        cache = cache_dir(self.out.parent, model)
        cache.mkdir(parents=True, exist_ok=True)
        rois = case_rois(self.data)
        for case in load_split(self.data, split):
            if case in rois:
                yield cache_case(self.data, case, model, cache)

    def _corrupted(self, masks: np.ndarray) -> np.ndarray:
        """(B, X, Y) contours -> each dilated or eroded in-plane by a radius of a drawn range."""
        rng = self.sampler.rng
        spacing = self.config["model"]["spacing_mm"][:2]
        return np.stack([corrupt_contour(m, spacing, RANGES_MM[rng.choice(self.ranges)], rng) for m in masks])

    def train_step(self) -> dict[str, float | None]:
        idx = self.sampler.sample(self.batch)
        data = self.train_set
        x = torch.as_tensor(data["image"][idx][:, None].astype(np.float32)).to(self.device)
        masks = unpack_bits(data["bits"][idx], len(self.names))
        y = torch.as_tensor(masks).float().to(self.device)
        available = torch.as_tensor(data["available"][idx]).to(self.device)
        chosen = data["structure"][idx]
        one = torch.zeros_like(available)
        one[torch.arange(len(idx)), torch.as_tensor(chosen, dtype=torch.long)] = True
        noisy = y.clone()
        contours = masks[np.arange(len(idx)), chosen]
        noisy[torch.arange(len(idx)), torch.as_tensor(chosen, dtype=torch.long)] = torch.as_tensor(
            self._corrupted(contours)
        ).to(y)
        if self.teacher == "network":
            with self.autocast():
                logits = self.modules["segmenter"](x)
            seg_loss = per_sample_loss(logits, y, available).mean()
            # The critic learns from the network's losses on the scored contour without
            # steering the network (the weights of a whole batch of 2 x B samples).
            detached = logits.detach()
            losses = relative_to_image(per_sample_loss(detached, y, one), per_sample_loss(detached, noisy, one))
        else:
            # The protocol knows which copies it corrupted: their loss is 1, a clean one's
            # 0 (a radius under a pixel leaves the copy clean, and it counts as clean).
            seg_loss = torch.zeros(())
            changed = (noisy != y).flatten(1).any(dim=1).float()
            losses = torch.cat([torch.zeros_like(changed), changed])
        labels = torch.cat([y, noisy]) * torch.cat([one, one])[:, :, None, None].float()
        weights = sample_weights(self.network(torch.cat([torch.cat([x, x]), labels], dim=1)), self.lam)
        loss = seg_loss + weighted_loss(losses, weights)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in self.optimizers.values():
            opt.step()
        relative = weights.detach().cpu().numpy() * len(weights)
        return {
            "loss": float(loss.detach()),
            "segmentation_loss": float(seg_loss.detach()) if self.teacher == "network" else None,
            "weight_clean": float(relative[: len(idx)].mean()),
            "weight_corrupted": float(relative[len(idx) :].mean()),
        }

    def critic(self) -> Critic:
        return Critic(self.network, self.lam, self.patch, float("nan"), "", 1.0, spatial_dims=2)

    def _score(self, cases: list[dict], seed: int) -> list[dict]:
        scorer = critic_scorer(self.critic(), len(self.config["model"]["structures"]))
        return score_contours(scorer, cases, self.config["model"]["spacing_mm"], seed)

    def validate(self) -> dict:
        rows = self._score(self.val_cases, seed=1)
        per = {name: roc_auc([r for r in rows if r["structure"] == c]) for c, name in enumerate(self.names)}
        # "mean" selects the best checkpoint: the ROC AUC over all validation contours.
        return {"per_structure": per, "mean": roc_auc(rows)}

    def finish(self) -> dict:
        self.network.load_state_dict(torch.load(self.out / "best.pt", map_location="cpu", weights_only=True))
        self.network.eval()
        val = self._score(self.val_cases, seed=1)
        test = self._score(list(self.cases("test")), seed=1)
        qam_path = self.out / "qam_best.pt"
        torch.save(self.network.state_dict(), qam_path)
        result = {
            "run": self.name,
            "command": f"python -m engine train experiments/configs/{self.name}.json",
            "seed": 1,
            "lambda": self.lam,
            "patch": self.patch,
            "spatial_dims": 2,
            "channels": list(self.qam_channels),
            "structures": self.names,
            "qam_sha256": sha256_of(qam_path),
            **calibration(val, test, self.names),
            "per_contour_test": test,
        }
        (self.out / "qam_auc.json").write_text(json.dumps(result, indent=1))
        return {
            "name": self.name,
            "seed": self.seed,
            "best_val_roc_auc": round(self.best, 4),
            "train_crops": len(self.train_set["image"]),
            "hours": round(self.hours, 3),
            "evaluation": {k: v for k, v in result.items() if k != "per_contour_test"},
        }
