"""Data augmentation of training patches, as nnU-Net does it (Isensee et al., Nat Methods
2021, supplementary note 4), with MONAI transforms.

Spatial (probability ``p_spatial`` each): rotation about each axis within
+-``rotate_deg`` degrees and scaling within 1 +- ``scale``, image bilinear, masks nearest
(``monai.transforms.RandAffined``; outside the patch is air, 0 after the window).
Intensity (probability ``p_intensity`` each): Gaussian noise, Gaussian blur,
multiplicative brightness, gamma (``RandGaussianNoised``, ``RandGaussianSmoothd``,
``RandScaleIntensityd``, ``RandAdjustContrastd``). ``mirror``: left-right flip with
probability 0.5; paired structures (names ending ``_L`` and ``_R``, e.g. ``Parotid_L`` and
``Parotid_R``) swap channels, since a mirrored left parotid is a right one. Only the
left-right axis is mirrored: head-and-neck anatomy is not symmetric along the others.
"""

from __future__ import annotations

import math

import numpy as np
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
)

from engine.structure import mirror_order
from engine.train.config import TrainingConfigError

AUGMENT_DEFAULTS = {
    "rotate_deg": 15.0,
    "scale": 0.15,
    "p_spatial": 0.2,
    "p_intensity": 0.15,
    "mirror": True,
}


def check_augment(augment: dict) -> None:
    """Raises TrainingConfigError naming an unknown or out-of-range ``training.augment`` field."""
    if not isinstance(augment, dict):
        raise TrainingConfigError("training.augment must be an object or null")
    for key, value in augment.items():
        if key not in AUGMENT_DEFAULTS:
            raise TrainingConfigError(f"training.augment.{key} is not an augmentation field")
        if key.startswith("p_") and not 0 <= value <= 1:
            raise TrainingConfigError(f"training.augment.{key} must be between 0 and 1, got {value!r}")


class PatchAugmenter:
    """Augments one (image, masks) patch.

    Args:
        augment: the ``training.augment`` fields (defaults ``AUGMENT_DEFAULTS``).
        structure_names: one per mask channel, for the left-right swap.
        lr_axis: the array axis that runs left-right (0 on a RAS or LPS model grid).

    ``__call__(image (1, X, Y, Z) float32, masks (C, X, Y, Z) uint8, rng)`` returns both
    augmented, same shapes and dtypes. All randomness comes from ``rng`` (the patch
    sampler's generator), so a resumed run draws the same augmentations.
    """

    def __init__(self, augment: dict, structure_names: list[str], lr_axis: int = 0):
        a = {**AUGMENT_DEFAULTS, **augment}
        self.mirror, self.lr_axis = bool(a["mirror"]), lr_axis
        self.swap = mirror_order(structure_names)
        angle = math.radians(a["rotate_deg"])
        p, q = a["p_spatial"], a["p_intensity"]
        keys = ["image", "masks"]
        self.transforms = Compose(
            [
                RandAffined(
                    keys,
                    prob=p,
                    rotate_range=(angle, angle, angle),
                    scale_range=(a["scale"],) * 3,
                    mode=("bilinear", "nearest"),
                    padding_mode="zeros",
                ),
                RandGaussianNoised("image", prob=q, std=0.01),
                RandGaussianSmoothd("image", prob=q, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
                RandScaleIntensityd("image", prob=q, factors=0.25),
                RandAdjustContrastd("image", prob=q, gamma=(0.7, 1.5)),
            ]
        )

    def __call__(self, image: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        self.transforms.set_random_state(seed=int(rng.integers(2**31)))
        out = self.transforms({"image": image, "masks": masks})
        image = np.asarray(out["image"], dtype=np.float32)
        masks = np.asarray(out["masks"]).astype(np.uint8)
        if self.mirror and rng.random() < 0.5:
            axis = 1 + self.lr_axis
            image = np.flip(image, axis)
            masks = np.flip(masks, axis)[self.swap]
        return np.ascontiguousarray(image), np.ascontiguousarray(masks)
