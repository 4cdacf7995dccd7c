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


@pytest.mark.parametrize(
    "kwargs", [{"channels": (4, 8)}, {"channels": (4, 0, 8)}, {"out_channels": 0}]
)
def test_bad_hyper_parameters_raise(kwargs):
    args = {"in_channels": 1, "out_channels": 2, "channels": (4, 8, 8)} | kwargs
    with pytest.raises(ValueError):
        ResSEUNet(**args)
