"""Shipped models: their configuration (the model card JSON) and loading of weights.

Each model ``NAME`` lives in ``engine/weights/`` as ``NAME.pt`` (state dict),
``NAME.json`` (configuration + model card, read here) and ``NAME.md`` (card for people).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import ModelError
from engine.models.res_se_unet import ResSEUNet
from engine.structure import Structure

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


class UnknownModelError(ModelError):
    """The requested model name is not shipped in ``engine/weights``."""


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
        return [
            Structure(s["label"], s["name"], tuple(s["color"]), s.get("type", "ORGAN"))
            for s in self.config["structures"]
        ]


def available_models(weights_dir: Path = WEIGHTS_DIR) -> list[str]:
    """Names of the segmentation models whose weights and card are both shipped
    (joint registration models, cards of ``"kind": "joint"``, are listed by
    ``engine.models.joint.available_joint_models``)."""
    return sorted(
        p.stem
        for p in weights_dir.glob("*.pt")
        if p.with_suffix(".json").exists()
        and json.loads(p.with_suffix(".json").read_text()).get("kind", "segmentation")
        == "segmentation"
    )


def model_config(name: str, weights_dir: Path = WEIGHTS_DIR) -> dict:
    """The configuration of a shipped model (its card JSON without the ``card`` record).

    Raises:
        UnknownModelError: no ``NAME.json`` in ``weights_dir``.
    """
    path = weights_dir / f"{name}.json"
    if not path.exists():
        raise UnknownModelError(f"model {name!r} has no card in {weights_dir}")
    return {k: v for k, v in json.loads(path.read_text()).items() if k != "card"}


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


def load_model(
    name: str, weights_dir: Path = WEIGHTS_DIR, device: torch.device | None = None
) -> LoadedModel:
    """Load a shipped model by name.

    Raises:
        UnknownModelError: no ``NAME.pt`` + ``NAME.json`` in ``weights_dir``.
    """
    weights, card = weights_dir / f"{name}.pt", weights_dir / f"{name}.json"
    if not (weights.exists() and card.exists()):
        raise UnknownModelError(
            f"model {name!r} is not available; shipped models: {', '.join(available_models(weights_dir)) or 'none'}"
        )
    config = json.loads(card.read_text())
    device = device or default_device()
    network = build_network(config)
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    network.to(device).eval()
    return LoadedModel(name, network, config, sha256_of(weights), device)
