"""The contour propagation methods by name, listed without loading them (no PyTorch).

Classical registrations run the elastix binary with the parameter files of
``engine/infer/elastix/`` (``METHOD_PARAMETERS``: method -> files, applied in order);
the joint registration + segmentation models are the shipped cards of ``"kind": "joint"``
(``engine.models.card``).
"""

from __future__ import annotations

from pathlib import Path

from engine.models.card import WEIGHTS_DIR, list_cards

METHOD_PARAMETERS: dict[str, tuple[str, ...]] = {
    "rigid": ("rigid.txt",),
    "affine": ("affine.txt",),
    "elastix-bspline": ("affine.txt", "bspline.txt"),
}
CLASSICAL_METHODS = tuple(METHOD_PARAMETERS)


def propagation_models(weights_dir: Path = WEIGHTS_DIR) -> list[str]:
    """Names ``engine.infer.propagate`` accepts: the classical methods, then the shipped
    joint models."""
    return [*CLASSICAL_METHODS, *(card.name for card in list_cards("joint", weights_dir))]
