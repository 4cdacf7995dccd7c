"""The network runs only in the box around the body: the box (the largest component,
grown by the margin, clipped to the grid) and segment_volume's zeros outside it."""

from __future__ import annotations

import numpy as np
import torch

from engine.infer.body import BODY_HU, body_box
from engine.infer.segment import segment_volume
from engine.models.registry import LoadedModel
from engine.volume import Volume


def test_the_box_is_the_largest_component_grown_by_the_margin_and_clipped():
    mask = np.zeros((60, 50, 40), bool)
    mask[20:40, 10:30, 2:38] = True  # the body
    mask[5:55, 45:48, 0:40] = True  # the couch: another component, smaller
    mask[1, 1, 1] = True  # a bright voxel in the air
    box = body_box(mask, spacing_mm=(2.0, 2.0, 5.0), margin_mm=10.0)
    # 10 mm is 5 voxels in-plane and 2 slices; the slice axis is clipped at the grid.
    assert box == (slice(15, 45), slice(5, 35), slice(0, 40))


def test_an_all_air_volume_keeps_the_whole_grid():
    assert body_box(np.zeros((7, 8, 9), bool), (1.0, 1.0, 1.0)) == (slice(0, 7), slice(0, 8), slice(0, 9))


class _Everywhere(torch.nn.Module):
    """Logits +8 for every structure at every voxel: any contour outside the box is the
    crop's fault."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 2, *x.shape[2:]), 8.0)


def _model(crop: bool) -> LoadedModel:
    config = {
        "structures": [{"name": "Brainstem", "label": 1}, {"name": "Mandible", "label": 2}],
        "spacing_mm": [2.0, 2.0, 2.0],
        "window_hu": [-1000.0, 1500.0],
        "axcodes": "RAS",
        "roi_size": [32, 32, 32],
        "threshold": 0.5,
        "crop_to_body": crop,
    }
    return LoadedModel("phantom", _Everywhere(), config, "0" * 64, torch.device("cpu"))


def test_with_the_crop_nothing_is_contoured_far_from_the_body():
    ct = np.full((80, 70, 40), -1000.0, np.float32)
    ct[30:50, 25:45, 10:30] = 40.0  # the body, 40 x 40 x 40 mm on a 2 mm grid
    volume = Volume(ct, np.diag([2.0, 2.0, 2.0, 1.0]))
    whole = segment_volume(volume, _model(crop=False)).array
    cropped = segment_volume(volume, _model(crop=True)).array
    assert (whole > 0).all()
    inside = np.zeros(ct.shape, bool)
    inside[20:60, 15:55, 0:40] = True  # the body grown by the 20 mm margin (10 voxels)
    assert (cropped[inside] > 0).all()
    assert not cropped[~inside].any()
    assert (ct[cropped > 0] > BODY_HU).sum() == (ct > BODY_HU).sum()  # the whole body is in
