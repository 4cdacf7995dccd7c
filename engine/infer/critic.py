"""The contour-quality critic: a trained QAM (Pick-and-Learn, Zhu, Shi and Wu, MICCAI
2019; ``engine.models.qam``) that scores one contour with its image.

Two kinds are shipped or trained:

* **2D** (``spatial_dims`` 2, the audit's critic since 2026-12-05): the QAM looks at each
  axial slice through the contour, a ``patch`` x ``patch`` crop of the image and the
  contour's mask, centred in-plane on the contour's bounding box; the contour's score is
  the mean over its slices of ``lambda * tanh(raw)`` (the OCM bound). It is trained on such
  crops in batches of many slices (``engine.train.critic_2d``), as the paper trained its
  QAM on whole 2D images in real batches.
* **3D** (``spatial_dims`` 3): one ``patch``^3 crop centred on the contour's bounding box
  (the critics trained beside 3D runs, ``engine.train.pick_and_learn``).

In both, the QAM's input is the image channel and one label channel per structure of the
model, all zero but the scored structure's, so it judges one contour at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import InputError
from engine.models.qam import QualityAwarenessModule, overfitting_control
from engine.models.registry import WEIGHTS_DIR, LoadedModel, sha256_of

# Slices scored in one forward pass of a 2D critic (memory stays small on a 512^2 grid).
SLICES_PER_PASS = 64


class AuditError(InputError):
    """The audit cannot run: no structure set, no model structure in it, or no critic."""


@dataclass(frozen=True)
class Critic:
    """A trained QAM with the settings it was trained and calibrated with.

    ``patch``: crop size in voxels (2D: pixels of an axial slice); ``threshold``: the score
    under which the critic alone would call a contour implausible (pooled over structures,
    chosen on val); ``auc``: ROC AUC, clean against corrupted
    test contours (the card's figure); ``spatial_dims``: 2 (slices) or 3 (one crop). The
    audit judges a contour by this score together with its agreement with the model
    (``engine.models.card.AuditRule``).
    """

    network: QualityAwarenessModule
    lam: float
    patch: int
    threshold: float
    weights_sha256: str
    auc: float = 1.0
    spatial_dims: int = 3


def load_critic(model: LoadedModel, weights_dir: Path = WEIGHTS_DIR) -> Critic:
    """The QAM shipped with ``model`` (card field ``qam``).

    Raises:
        AuditError: the model ships no QAM, or its weights do not match the card.
    """
    card = model.card.critic
    if card is None:
        raise AuditError(f"model {model.name!r} has no contour-quality critic; use a model that ships one (hn-rt)")
    path = weights_dir / card.weights
    if not path.exists() or sha256_of(path) != card.sha256:
        raise AuditError(f"{card.weights}: missing or not the weights the card names")
    network = QualityAwarenessModule(
        1 + len(model.config["structures"]),
        channels=card.channels,
        spatial_dims=card.spatial_dims,
    )
    network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return Critic(
        network.eval(),
        card.lam,
        card.patch,
        card.threshold,
        card.sha256,
        card.auc,
        card.spatial_dims,
    )


def crop_centred(array: np.ndarray, centre: np.ndarray, size: int) -> np.ndarray:
    """(..., *S) -> (..., size, ..., size) around ``centre`` (one coordinate per axis of S,
    the last ``len(centre)`` axes), zero-padded where the crop leaves the array."""
    spatial = len(centre)
    out = np.zeros((*array.shape[:-spatial], *([size] * spatial)), dtype=array.dtype)
    src, dst = [], []
    for c, n in zip(centre, array.shape[-spatial:], strict=True):
        start = int(round(c)) - size // 2
        lo, hi = max(start, 0), min(start + size, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    into: tuple[Any, ...] = (..., *dst)
    taken: tuple[Any, ...] = (..., *src)
    out[into] = array[taken]
    return out


def contour_window(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where a 2D critic looks at a contour: (the in-plane centre (2,) of the bounding box
    of the whole contour, in voxels; the axial slices (S,) it is on). ``mask``: (X, Y, Z)
    0/1 on the model grid (RAS, so Z is the axial direction), not empty."""
    where = np.argwhere(mask > 0)
    return (where[:, :2].min(axis=0) + where[:, :2].max(axis=0)) / 2.0, np.unique(where[:, 2])


def crop_slices(volume: np.ndarray, centre: np.ndarray, slices: np.ndarray, size: int) -> np.ndarray:
    """(..., X, Y, Z) -> (S, ..., size, size): the axial ``slices``, each cropped to
    ``size`` x ``size`` around the in-plane ``centre`` (zero-padded at the edges)."""
    return crop_centred(np.moveaxis(volume[..., slices], -1, 0), centre, size)


def axial_crops(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The axial slices through a contour, cropped around it, as a 2D critic sees them.

    image: (X, Y, Z) float on the model grid; mask: (X, Y, Z) 0/1 of one structure, not
    empty. The same ``size`` x ``size`` window on every slice (``contour_window``), so the
    critic sees where the contour starts and ends. Returns (images (S, size, size), masks
    (S, size, size)) for the S slices the contour is on.
    """
    centre, slices = contour_window(mask)
    return crop_slices(image, centre, slices, size), crop_slices(mask, centre, slices, size)


def critic_input(images: np.ndarray, masks: np.ndarray, channel: int, n_structures: int) -> np.ndarray:
    """The QAM's input (N, 1 + n_structures, *S) float32: the image, then one label channel
    per structure, all zero but ``channel`` (the scored structure's index)."""
    x = np.zeros((len(images), 1 + n_structures, *images.shape[1:]), dtype=np.float32)
    x[:, 0] = images
    x[:, 1 + channel] = masks > 0
    return x


def qam_score(critic: Critic, image: np.ndarray, mask: np.ndarray, channel: int, n_structures: int) -> float:
    """The critic's bounded score of one contour, in [-lambda, lambda]; the lower, the less
    plausible.

    image: (X, Y, Z) float on the model grid (windowed as in training); mask: (X, Y, Z)
    0/1 of the structure on the same grid, not empty; ``channel``: the structure's index
    among the model's ``n_structures``. A 2D critic scores every axial slice through the
    contour (``axial_crops``) and returns the mean; a 3D critic scores one ``patch``^3
    crop centred on the contour's bounding box.
    """
    if critic.spatial_dims == 2:
        images, masks = axial_crops(image, mask, critic.patch)
        x = critic_input(images, masks, channel, n_structures)
    else:
        where = np.argwhere(mask > 0)
        centre = (where.min(axis=0) + where.max(axis=0)) / 2.0
        x = crop_centred(critic_input(image[None], mask[None], channel, n_structures), centre, critic.patch)
    scores = []
    with torch.no_grad():
        for start in range(0, len(x), SLICES_PER_PASS):
            raw = critic.network(torch.as_tensor(x[start : start + SLICES_PER_PASS]))
            scores.append(overfitting_control(raw, critic.lam))
    return float(torch.cat(scores).mean())
