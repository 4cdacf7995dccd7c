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


class UnknownModelError(ModelError):
    """The requested model name is not shipped in ``engine/weights``."""


@dataclass(frozen=True)
class StructureRule:
    """How a critic judges one structure: its ROC AUC on the validation contours (which
    decides whether its score is acted on), on the test contours (what the audit states),
    and the score under which a contour of it is called implausible (from its clean
    validation contours)."""

    name: str
    val_auc: float
    test_auc: float
    threshold: float


@dataclass(frozen=True)
class CriticCard:
    """A model's contour-quality critic (QAM + OCM, card key ``qam``): its weights file,
    their SHA-256, the OCM bound ``lam``, the patch size in voxels (pixels of an axial
    slice for a 2D critic), the score under which a contour is called implausible, the ROC
    AUC on corrupted test contours, the QAM's shape (``spatial_dims`` 2 or 3, its
    convolution widths ``channels``; ``engine.infer.critic``) and, where calibrated per
    structure, each structure's rule (``StructureRule``)."""

    weights: str
    sha256: str
    lam: float
    patch: int
    threshold: float
    auc: float
    spatial_dims: int = 3
    channels: tuple[int, ...] = (8, 16, 32, 32)
    per_structure: tuple[StructureRule, ...] = ()


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
            tuple(
                StructureRule(str(name), float(p["roc_auc_val"]), float(p["roc_auc_test"]), float(p["threshold_val"]))
                for name, p in (q.get("per_structure") or {}).items()
            ),
        )

    @property
    def domain(self) -> dict[str, Any] | None:
        """The scans it was trained for (``engine.infer.domain``), or None."""
        return self.data.get("domain") or None

    def test_dice(self, structure: str) -> tuple[float, float] | None:
        """(mean, standard deviation) of its test-split Dice for ``structure``, if recorded."""
        per = self.data.get("card", {}).get("evaluation_test", {}).get("per_structure", {}).get(structure)
        if not per or per.get("dice_std") is None:
            return None
        return float(per["dice_mean"]), float(per["dice_std"])


def list_cards(kind: str, weights_dir: Path = WEIGHTS_DIR) -> list[ModelCard]:
    """The cards of the shipped models of ``kind`` (weights and card both shipped), by name."""
    shipped = sorted(p.stem for p in Path(weights_dir).glob("*.pt") if p.with_suffix(".json").exists())
    return [card for card in (ModelCard.load(n, weights_dir) for n in shipped) if card.kind == kind]
