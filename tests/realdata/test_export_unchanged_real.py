"""Real data: the cropped export gives the contours the whole-grid export gave.

Until issue 15, export resampled every structure's probabilities onto the whole input
grid (float32, C x I x J x K) and took the argmax there. On each openkbp_dicom case and
shipped model, that reference is computed from the same network output, and the
RTSTRUCT written by today's ``segment_volume`` + ``build_rtstruct``, read back as a
planning system reads it, must match it per structure (Dice >= 0.99).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import ResampleToMatch

from engine.infer import segment
from engine.io.dicom_series import read_series
from engine.io.rtstruct import build_rtstruct
from engine.io.rtstruct_import import import_rtstruct
from engine.models.registry import load_model
from tests.stack import data_dir

CASES = ["pt_104", "pt_106", "pt_108", "pt_109", "pt_11", "pt_121"]


def _whole_grid_labels(prob: MetaTensor, volume, config: dict) -> np.ndarray:
    """The export before issue 15: all channels on the whole grid, argmax, threshold."""
    template = MetaTensor(
        torch.zeros((1, *volume.array.shape)),
        affine=torch.as_tensor(volume.affine, dtype=torch.float64),
    )
    on_input = ResampleToMatch(mode="bilinear", padding_mode="zeros")(prob, img_dst=template).as_tensor().numpy()
    values = np.array([s["label"] for s in config["structures"]], dtype=np.uint8)
    foreground = on_input.max(axis=0) > config["threshold"]
    return np.where(foreground, values[on_input.argmax(axis=0)], 0)


@pytest.mark.parametrize("model_name", ["hn-oar", "hn-rt"])
def test_rtstruct_contours_match_the_whole_grid_export(model_name, monkeypatch):
    model = load_model(model_name)
    seen = {}

    def keep_probabilities(prob, reference, values, threshold):
        seen["prob"] = prob
        return labels_to_input_grid(prob, reference, values, threshold)

    labels_to_input_grid = segment.labels_to_input_grid
    monkeypatch.setattr(segment, "labels_to_input_grid", keep_probabilities)
    compared = 0
    for case in CASES:
        series = read_series(data_dir("openkbp_dicom", case))
        labels = segment.segment_volume(series.volume, model)
        expected = _whole_grid_labels(seen["prob"], series.volume, model.config)
        ds = build_rtstruct(labels, series, model.structures, model.name, "0" * 64)
        read_back = {roi.name: roi.mask for roi in import_rtstruct(ds, series)}
        for s in model.structures:
            a, b = expected == s.label, read_back[s.name]
            if not a.any() and not b.any():
                continue
            both = np.count_nonzero(a) + np.count_nonzero(b)
            dice = 2 * np.count_nonzero(a & b) / both
            assert dice >= 0.99, f"{case} {s.name}: Dice {dice:.4f}"
            compared += 1
    assert compared >= 6 * 5
