"""Shipped segmentation models: the network a card describes, loaded with its weights.

Each model ``NAME`` lives in ``engine/weights/`` as ``NAME.pt`` (state dict),
``NAME.json`` (configuration + model card, read by ``engine.models.card``) and
``NAME.md`` (card for people).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.models.card import (
    WEIGHTS_DIR,
    ModelCard,
    UnknownModelError,
    list_cards,
    structures_of,
)
from engine.models.res_se_unet import ResSEUNet
from engine.structure import Structure


@dataclass(frozen=True)
class LoadedModel:
    """A network in eval mode with its configuration and provenance."""

    name: str
    network: torch.nn.Module
    config: dict
    weights_sha256: str
    device: torch.device

    @property
    def structures(self) -> list[Structure]:
        return structures_of(self.config)

    @property
    def card(self) -> ModelCard:
        """Its card, typed (``config`` is the card's document)."""
        return ModelCard(self.config, WEIGHTS_DIR / f"{self.name}.json")


def available_models(weights_dir: Path = WEIGHTS_DIR) -> list[str]:
    """Names of the segmentation models whose weights and card are both shipped
    (joint registration models, cards of ``"kind": "joint"``, are listed by
    ``engine.models.joint.available_joint_models``)."""
    return [card.name for card in list_cards("segmentation", weights_dir)]


def model_config(name: str, weights_dir: Path = WEIGHTS_DIR) -> dict:
    """The configuration of a shipped model (its card JSON without the ``card`` record).

    Raises:
        UnknownModelError: no ``NAME.json`` in ``weights_dir``.
    """
    return ModelCard.load(name, weights_dir).config


def build_network(config: dict) -> torch.nn.Module:
    """Instantiate the (untrained) network a configuration describes."""
    if config["architecture"] != "ResSEUNet":
        raise UnknownModelError(f"unknown architecture {config['architecture']!r}")
    return ResSEUNet(
        1,
        len(config["structures"]),
        channels=config["channels"],
        residual=config.get("residual", True),
        se=config.get("se", True),
        full_resolution_channels=config.get("full_resolution_channels", 0),
        deep_supervision=config.get("deep_supervision", False),
    )


def default_device() -> torch.device:
    """CUDA when a GPU is present, the CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(name: str, weights_dir: Path = WEIGHTS_DIR, device: torch.device | None = None) -> LoadedModel:
    """Load a shipped model by name.

    Raises:
        UnknownModelError: no ``NAME.pt`` + ``NAME.json`` in ``weights_dir``.
    """
    weights, card = weights_dir / f"{name}.pt", weights_dir / f"{name}.json"
    if not (weights.exists() and card.exists()):
        raise UnknownModelError(
            f"model {name!r} is not available; shipped models: {', '.join(available_models(weights_dir)) or 'none'}"
        )
    config = ModelCard.load(name, weights_dir).data
    device = device or default_device()
    network = build_network(config)
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    network.to(device).eval()
    return LoadedModel(name, network, config, sha256_of(weights), device)
