"""Network inference on the model grid: sliding window, sigmoid, largest component."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from scipy import ndimage


def predict_probabilities(
    network: torch.nn.Module,
    image: torch.Tensor,
    roi_size: Sequence[int],
    device: torch.device,
) -> torch.Tensor:
    """Sigmoid probabilities (B, C, X, Y, Z) for a normalised image (B, 1, X, Y, Z).

    Sliding window of ``roi_size`` voxels, 25 % overlap, Gaussian blending (MONAI);
    an image smaller than ``roi_size`` is padded to it.
    """
    with torch.no_grad():
        logits = sliding_window_inference(
            image.to(device),
            roi_size=tuple(roi_size),
            sw_batch_size=1,
            predictor=network,
            overlap=0.25,
            mode="gaussian",
        )
    return torch.sigmoid(logits).cpu()


def keep_largest_component(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """Zero each channel of (C, X, Y, Z) outside the largest connected component of
    ``probabilities > threshold``: every structure we delineate is one connected organ,
    so isolated islands are false positives."""
    out = probabilities.copy()
    for c in range(out.shape[0]):
        components, n = ndimage.label(out[c] > threshold)
        if n > 1:
            sizes = np.bincount(components.ravel())[1:]
            out[c][(components != 0) & (components != 1 + int(np.argmax(sizes)))] = 0
    return out
