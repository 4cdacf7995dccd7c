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

from engine.models.res_se_unet import ResSEUNet
from engine.structure import Structure

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


class UnknownModelError(ValueError):
    """The requested model name is not shipped in ``engine/weights``."""


# Configuration of ``hn-oar`` as trained; the card JSON carries the same fields.
HN_OAR_CONFIG: dict = {
    "name": "hn-oar",
    "architecture": "ResSEUNet",
    "channels": [16, 32, 64, 96, 128],
    "spacing_mm": [3.5, 3.5, 2.5],
    "axcodes": "RAS",
    "window_hu": [-1000.0, 1500.0],
    "roi_size": [160, 160, 160],
    "threshold": 0.5,
    "structures": [
        {
            "label": 1,
            "name": "Brainstem",
            "source": "Brainstem",
            "color": [255, 170, 0],
            "type": "ORGAN",
        },
        {
            "label": 2,
            "name": "SpinalCord",
            "source": "SpinalCord",
            "color": [255, 255, 0],
            "type": "ORGAN",
        },
        {
            "label": 3,
            "name": "Parotid_R",
            "source": "RightParotid",
            "color": [0, 170, 255],
            "type": "ORGAN",
        },
        {
            "label": 4,
            "name": "Parotid_L",
            "source": "LeftParotid",
            "color": [0, 255, 128],
            "type": "ORGAN",
        },
        {
            "label": 5,
            "name": "Esophagus",
            "source": "Esophagus",
            "color": [255, 85, 170],
            "type": "ORGAN",
        },
        {
            "label": 6,
            "name": "Larynx",
            "source": "Larynx",
            "color": [170, 85, 255],
            "type": "ORGAN",
        },
        {
            "label": 7,
            "name": "Mandible",
            "source": "Mandible",
            "color": [230, 230, 230],
            "type": "ORGAN",
        },
    ],
}


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
