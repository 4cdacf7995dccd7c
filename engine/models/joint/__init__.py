"""Joint registration + segmentation models for contour propagation (issue 5).

Every model maps fixed, moving (B, 1, D, H, W) in [0, 1] on the working grid to a
``JointOutput`` (DDF in voxels, MONAI ``Warp`` convention; segmentation logits of the
fixed image or None). ``JOINT_MODELS`` names the architectures, ``JOINT_LOSSES`` their
training losses ``loss(model, batch, step, weights) -> (loss, terms)``.

A shipped joint model is ``engine/weights/NAME.pt`` + ``NAME.json`` with
``"kind": "joint"``, ``"architecture"`` (a key of ``JOINT_MODELS``), ``"features"``,
``"options"``, ``"spacing_mm"``, ``"window_hu"`` and ``"structures"``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from engine.models.card import WEIGHTS_DIR, ModelCard, UnknownModelError, list_cards
from engine.models.joint.acsgregnet import ACSGRegNet, acsgregnet_loss
from engine.models.joint.base import DEFAULT_FEATURES, JointOutput
from engine.models.joint.cross_stitch import CrossStitchNet, cross_stitch_loss
from engine.models.joint.deepatlas import DeepAtlas, deepatlas_loss
from engine.models.joint.dual_head import DualHeadNet, dual_head_loss

JOINT_MODELS: dict[str, type[nn.Module]] = {
    "cross-stitch": CrossStitchNet,
    "deepatlas": DeepAtlas,
    "dual-head": DualHeadNet,
    "acsgregnet": ACSGRegNet,
}
JOINT_LOSSES: dict[str, Callable] = {
    "cross-stitch": cross_stitch_loss,
    "deepatlas": deepatlas_loss,
    "dual-head": dual_head_loss,
    "acsgregnet": acsgregnet_loss,
}

__all__ = [
    "JOINT_LOSSES",
    "JOINT_MODELS",
    "JointOutput",
    "available_joint_models",
    "build_joint_model",
    "load_joint_model",
]


def build_joint_model(config: dict) -> nn.Module:
    """The untrained network of a joint model configuration: ``architecture``,
    ``structures`` (list; the segmentation has len + 1 channels), optional ``features``
    (6 widths) and ``options`` (keyword arguments of the architecture's constructor).

    Raises:
        UnknownModelError: ``architecture`` is not a key of ``JOINT_MODELS``.
        ValueError: bad ``features`` or ``options``.
    """
    name = config.get("architecture")
    if name not in JOINT_MODELS:
        raise UnknownModelError(f"unknown joint architecture {name!r}; known: {', '.join(JOINT_MODELS)}")
    try:
        return JOINT_MODELS[name](
            len(config["structures"]),
            config.get("features", DEFAULT_FEATURES),
            **config.get("options", {}),
        )
    except TypeError as exc:
        raise ValueError(f"{name}: bad options {config.get('options')} ({exc})") from exc


def available_joint_models(weights_dir: Path = WEIGHTS_DIR) -> list[str]:
    """Names of the shipped joint models (a ``.pt`` with a card of ``"kind": "joint"``)."""
    return [card.name for card in list_cards("joint", weights_dir)]


def load_joint_model(name: str, weights_dir: Path = WEIGHTS_DIR) -> tuple[nn.Module, dict]:
    """A shipped joint model in eval mode on the CPU, with its card (configuration).

    Raises:
        UnknownModelError: no joint model ``name`` in ``weights_dir``.
    """
    if name not in available_joint_models(weights_dir):
        raise UnknownModelError(
            f"joint model {name!r} is not shipped; shipped: {', '.join(available_joint_models(weights_dir)) or 'none'}"
        )
    config = ModelCard.load(name, weights_dir).data
    network = build_joint_model(config)
    state = torch.load(weights_dir / f"{name}.pt", map_location="cpu", weights_only=True)
    network.load_state_dict(state)
    return network.eval(), config
