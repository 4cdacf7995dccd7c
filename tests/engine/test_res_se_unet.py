"""Res-UNet + SE: output shape, and bad shapes or hyper-parameters raise."""

from __future__ import annotations

import pytest
import torch

from engine.models.res_se_unet import ResSEUNet


def test_output_shape_matches_input_grid():
    torch.manual_seed(0)
    net = ResSEUNet(1, 7, channels=(4, 8, 8, 16, 16)).eval()
    with torch.no_grad():
        y = net(torch.randn(2, 1, 32, 16, 48))
    assert y.shape == (2, 7, 32, 16, 48)


def test_input_not_divisible_raises():
    net = ResSEUNet(1, 2, channels=(4, 8, 8))
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 1, 10, 8, 8))


@pytest.mark.parametrize("kwargs", [{"channels": (4, 8)}, {"channels": (4, 0, 8)}, {"out_channels": 0}])
def test_bad_hyper_parameters_raise(kwargs):
    args = {"in_channels": 1, "out_channels": 2, "channels": (4, 8, 8)} | kwargs
    with pytest.raises(ValueError):
        ResSEUNet(**args)


def test_full_resolution_level_and_deep_supervision_shapes():
    torch.manual_seed(0)
    net = ResSEUNet(1, 3, channels=(4, 8, 8, 16), full_resolution_channels=4, deep_supervision=True)
    x = torch.randn(2, 1, 16, 32, 24)
    outputs = net.train()(x)
    assert [tuple(o.shape) for o in outputs] == [
        (2, 3, 16, 32, 24),
        (2, 3, 8, 16, 12),
        (2, 3, 4, 8, 6),
    ]
    with torch.no_grad():
        assert net.eval()(x).shape == (2, 3, 16, 32, 24)  # inference: full resolution only


def test_negative_full_resolution_width_raises():
    with pytest.raises(ValueError, match="full_resolution_channels"):
        ResSEUNet(1, 2, channels=(4, 8, 8), full_resolution_channels=-1)
