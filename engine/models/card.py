"""Model cards, read in one place: ``engine/weights/NAME.json`` as a typed object.

Each shipped model ``NAME`` is ``NAME.pt`` (state dict), ``NAME.json`` (its configuration
and card: what the loader needs to build the network, plus ``card``: provenance and
evaluations, ``qam``: a contour-quality critic, ``domain``: the scans it was trained
for) and ``NAME.md`` (the card for people, ``engine.train.publish``). A card's ``kind``
is ``"segmentation"`` (the default) or ``"joint"`` (registration + segmentation, for
contour propagation).

Reading a card needs neither PyTorch nor MONAI, so listing the models (as the web
pages do) loads no network code; ``engine.models.registry`` and
``engine.models.joint`` build the networks the cards describe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ModelError
from engine.structure import Structure

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
# The audit flags by a structure's combined check only if it separates corrupted from clean
# validation contours this well (ROC AUC); a weaker check's score is shown, not acted on.
MIN_AUC_TO_FLAG = 0.8


class UnknownModelError(ModelError):
    """The requested model name is not shipped in ``engine/weights``."""


@dataclass(frozen=True)
class AuditRule:
    """How the contour audit judges one structure (card key ``audit``, written by
    ``engine.train.audit_calibration``): its two checks, the critic's score and the
    contour's Dice with the model's delineation, each standardised by the mean and
    standard deviation over that structure's clean validation contours and averaged
    (``score``); the combined score under which a contour is called implausible
    (``threshold``, from the clean validation contours); and the combined check's ROC AUC,
    corrupted against clean contours, on the validation contours (which decides whether
    the audit acts on it) and on the test contours (what the audit states)."""

    name: str
    qam_mean: float
    qam_sd: float
    dice_mean: float
    dice_sd: float
    threshold: float
    val_auc: float
    test_auc: float

    def score(self, qam: float, dice: float) -> float:
        """The combined score of a contour: the mean of its two standardised checks, in
        standard deviations of sound contours (0: a typical sound contour; lower: worse)."""
        return ((qam - self.qam_mean) / self.qam_sd + (dice - self.dice_mean) / self.dice_sd) / 2.0

    @property
    def acts(self) -> bool:
        """Whether the audit calls a contour implausible by this check (``MIN_AUC_TO_FLAG``)."""
        return self.val_auc >= MIN_AUC_TO_FLAG

    @property
    def min_dice(self) -> float:
        """Dice with the model below which a contour disagrees with it more than sound
        contours do: the clean validation mean minus two standard deviations."""
        return max(0.0, self.dice_mean - 2.0 * self.dice_sd)


@dataclass(frozen=True)
class CriticCard:
    """A model's contour-quality critic (QAM + OCM, card key ``qam``): its weights file,
    their SHA-256, the OCM bound ``lam``, the patch size in voxels (pixels of an axial
    slice for a 2D critic), the score under which a contour is called implausible, the ROC
    AUC on corrupted test contours, the QAM's shape (``spatial_dims`` 2 or 3, its
    convolution widths ``channels``; ``engine.infer.critic``). Its per-structure
    calibration stays in the card's ``qam`` record for people; the audit judges by
    ``AuditRule``."""

    weights: str
    sha256: str
    lam: float
    patch: int
    threshold: float
    auc: float
    spatial_dims: int = 3
    channels: tuple[int, ...] = (8, 16, 32, 32)


def structures_of(config: dict[str, Any]) -> list[Structure]:
    """The ``structures`` of a card or model configuration as structures."""
    return [
        Structure(int(s["label"]), str(s["name"]), tuple(s["color"]), s.get("type", "ORGAN"))
        for s in config.get("structures", [])
    ]


class ModelCard:
    """The card ``NAME.json`` of a shipped model (``data``: the document as read)."""

    def __init__(self, data: dict[str, Any], path: Path) -> None:
        self.data = data
        self.path = path

    @classmethod
    def load(cls, name: str, weights_dir: Path = WEIGHTS_DIR) -> ModelCard:
        """The card of model ``name``.

        Raises:
            UnknownModelError: no ``NAME.json`` in ``weights_dir``, or not a JSON object.
        """
        path = Path(weights_dir) / f"{name}.json"
        try:
            data = json.loads(path.read_text())
        except OSError:
            raise UnknownModelError(f"model {name!r} has no card in {weights_dir}") from None
        except ValueError as exc:
            raise UnknownModelError(f"the card of model {name!r} is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise UnknownModelError(f"the card of model {name!r} is not a JSON object")
        return cls(data, path)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def weights(self) -> Path:
        return self.path.with_suffix(".pt")

    @property
    def kind(self) -> str:
        return str(self.data.get("kind", "segmentation"))

    @property
    def config(self) -> dict[str, Any]:
        """What builds and runs the network: the card without its ``card`` record."""
        return {k: v for k, v in self.data.items() if k != "card"}

    @property
    def structures(self) -> list[Structure]:
        """The structures it delineates, in label order (RT ROI type from ``type``)."""
        return structures_of(self.data)

    @property
    def roi_names(self) -> set[str]:
        """Its structures' TG-263 names and their spelling in the training data (``source``)."""
        return {str(s[key]) for s in self.data.get("structures", []) for key in ("name", "source") if s.get(key)}

    def text(self, key: str) -> str | None:
        """A free-text field of the card (``description``, ``version``, ``modality``)."""
        value = self.data.get(key)
        return value if isinstance(value, str) else None

    @property
    def critic(self) -> CriticCard | None:
        """Its contour-quality critic, or None when it ships none (it cannot audit)."""
        q = self.data.get("qam")
        if not q:
            return None
        return CriticCard(
            str(q["weights"]),
            str(q["sha256"]),
            float(q["lambda"]),
            int(q["patch"]),
            float(q["threshold"]),
            float(q["roc_auc_test"]["both"]),
            int(q.get("spatial_dims", 3)),
            tuple(int(c) for c in q.get("channels", (8, 16, 32, 32))),
        )

    @property
    def domain(self) -> dict[str, Any] | None:
        """The scans it was trained for (``engine.infer.domain``), or None."""
        return self.data.get("domain") or None

    def audit_rules(self, weights_sha256: str, qam_sha256: str) -> dict[str, AuditRule]:
        """The audit's rule per structure name, if the card's ``audit`` calibration was made
        with these network and critic weights; empty when it has none or a stale one (a
        rule calibrated on other weights says nothing about these)."""
        a = self.data.get("audit")
        if not a or (a.get("weights_sha256"), a.get("qam_sha256")) != (weights_sha256, qam_sha256):
            return {}
        return {
            name: AuditRule(
                name,
                float(p["qam_mean"]),
                float(p["qam_sd"]),
                float(p["dice_mean"]),
                float(p["dice_sd"]),
                float(p["threshold_val"]),
                float(p["roc_auc_val"]),
                float(p["roc_auc_test"]),
            )
            for name, p in a["per_structure"].items()
        }


def list_cards(kind: str, weights_dir: Path = WEIGHTS_DIR) -> list[ModelCard]:
    """The cards of the shipped models of ``kind`` (weights and card both shipped), by name."""
    shipped = sorted(p.stem for p in Path(weights_dir).glob("*.pt") if p.with_suffix(".json").exists())
    return [card for card in (ModelCard.load(n, weights_dir) for n in shipped) if card.kind == kind]
