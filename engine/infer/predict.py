"""Network inference on the model grid: sliding window, sigmoid, largest component."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from scipy import ndimage

from engine.hardware import cpu_has_native_bfloat16
from engine.structure import mirror_order


def test_time_mirror(config: dict) -> list[int] | None:
    """The channel order for test-time mirroring when a model's configuration asks for it
    (``"test_time_mirror": true``), else None."""
    if not config.get("test_time_mirror"):
        return None
    return mirror_order([s["name"] for s in config["structures"]])


def inference_bfloat16(config: dict, device: torch.device) -> bool:
    """Whether the network runs under bfloat16 autocast: where the model's card allows it
    (``"inference_bfloat16": true``, chosen on val by ``experiments/inference_settings.py``)
    and the device computes in bfloat16 natively (CUDA, or a CPU with AVX512-BF16 or
    AMX-BF16, ``engine.hardware``); float32 elsewhere, where bfloat16 is many times slower.

    ``DELINEO_INFERENCE_FLOAT32=1`` in the environment keeps float32 everywhere, so that
    every machine gives the same contours (commissioning, the golden tests): bfloat16's
    differ from float32's by a few boundary voxels (Dice 0.99 against them on a test CT).
    """
    if not config.get("inference_bfloat16") or os.environ.get("DELINEO_INFERENCE_FLOAT32") == "1":
        return False
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bfloat16())


def predict_probabilities(
    network: torch.nn.Module,
    image: torch.Tensor,
    roi_size: Sequence[int],
    device: torch.device,
    mirror: Sequence[int] | None = None,
    bfloat16: bool = False,
) -> torch.Tensor:
    """Sigmoid probabilities (B, C, X, Y, Z) for a normalised image (B, 1, X, Y, Z) on a
    RAS (or LPS) model grid, X running left-right.

    Sliding window of ``roi_size`` voxels, 25 % overlap, Gaussian blending (MONAI);
    an image smaller than ``roi_size`` is padded to it. ``mirror``: test-time mirroring
    (nnU-Net): the probabilities are averaged with those of the left-right flipped image,
    flipped back and its channels put in the order ``mirror`` gives
    (``engine.structure.mirror_order``: left and right structures swap). ``bfloat16``:
    each window's forward pass under bfloat16 autocast (``inference_bfloat16``), its
    logits blended in float32.
    """

    def window(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16):
            return network(x).float()

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(
            sliding_window_inference(
                x.to(device),
                roi_size=tuple(roi_size),
                sw_batch_size=1,
                predictor=window,
                overlap=0.25,
                mode="gaussian",
            )
        ).cpu()

    with torch.no_grad():
        prob = predict(image)
        if mirror is not None:
            flipped = predict(torch.flip(image, dims=(2,))).flip(dims=(2,))
            prob = (prob + flipped[:, list(mirror)]) / 2
    return prob


# No structure these models delineate is smaller: the smallest reference volume of any of
# them in the 203 contoured OpenKBP cases is a Larynx of 0.53 cm3 (``python
# experiments/reference_volumes.py``). A smaller prediction is a fragment, not an organ.
MIN_STRUCTURE_CM3 = 0.5


def keep_largest_component(probabilities: np.ndarray, threshold: float, min_voxels: int = 1) -> np.ndarray:
    """Zero each channel of (C, X, Y, Z) outside the largest connected component of
    ``probabilities > threshold``: every structure we delineate is one connected organ,
    so isolated islands are false positives. A channel whose largest component has fewer
    than ``min_voxels`` voxels (a fragment smaller than any such organ,
    ``MIN_STRUCTURE_CM3``) is zeroed where it is above ``threshold``: the structure is
    not found. Components are labelled inside the box of the channel's voxels above
    ``threshold`` (no component reaches beyond it)."""
    out = probabilities.copy()
    for c in range(out.shape[0]):
        above = out[c] > threshold
        found = ndimage.find_objects(above.view(np.uint8))
        if not found:
            continue
        box = found[0]
        components, n = ndimage.label(above[box])
        sizes = np.bincount(components.ravel())[1:]
        region = out[c][box]  # a view: zeroing it zeroes ``out``
        if sizes.max() < min_voxels:
            region[components != 0] = 0
        elif n > 1:
            region[(components != 0) & (components != 1 + int(np.argmax(sizes)))] = 0
    return out
