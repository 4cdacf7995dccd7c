"""Joint registration + segmentation models (engine.models.joint): the JointOutput
contract, identity at initialisation, the integration and mixing blocks, and a short
training run on a shifted blob that lowers each model's loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.networks.blocks import DVF2DDF

from engine.infer.displacement import folding_percent
from engine.models.joint import (
    JOINT_LOSSES,
    JOINT_MODELS,
    available_joint_models,
    build_joint_model,
    load_joint_model,
)
from engine.models.joint.acsgregnet import affine_ddf
from engine.models.joint.base import warp_image
from engine.models.joint.cross_stitch import CrossStitch
from engine.models.joint.dual_head import integrate_gradient
from engine.models.registry import UnknownModelError, available_models
from engine.train.config import TrainingConfigError
from engine.train.joint import load_joint_config
from engine.train.joint_pairs import synthetic_ddf

N_STRUCTURES = 2
SHAPE = (32, 16, 16)  # (D, H, W): multiples of 16, more than 1 voxel at the 1/16 level


def _config(name: str) -> dict:
    return {"architecture": name, "structures": [{}] * N_STRUCTURES}


def _blob(centre: tuple[float, float, float]) -> torch.Tensor:
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in SHAPE], indexing="ij"))
    d2 = ((grid - torch.tensor(centre).view(3, 1, 1, 1)) ** 2).sum(dim=0)
    return torch.exp(-d2 / (2 * 4.0**2))[None, None]  # (1, 1, D, H, W)


def _shifted_blob_batch() -> dict:
    """Fixed: a blob at the centre; moving: the same blob 2 voxels further along axis 0.
    Structure 1 is the blob's core, structure 2 (PTV) is not contoured."""
    fixed, moving = _blob((16.0, 8.0, 8.0)), _blob((18.0, 8.0, 8.0))

    def masks(img: torch.Tensor) -> torch.Tensor:
        return torch.cat([(img > 0.5).float(), torch.zeros_like(img)], dim=1)

    available = torch.tensor([[True, False]])
    return {
        "fixed": fixed,
        "moving": moving,
        "fixed_masks": masks(fixed),
        "moving_masks": masks(moving),
        "fixed_available": available,
        "moving_available": available,
        "fixed_ptv": torch.zeros_like(fixed),
        "moving_ptv": torch.zeros_like(moving),
    }


@pytest.mark.parametrize("name", sorted(JOINT_MODELS))
def test_forward_gives_the_contract_shapes_and_identity_at_init(name):
    torch.manual_seed(0)
    net = build_joint_model(_config(name)).eval()
    fixed, moving = torch.rand(2, 1, *SHAPE), torch.rand(2, 1, *SHAPE)
    with torch.no_grad():
        out = net(fixed, moving)
    assert out.ddf.shape == (2, 3, *SHAPE)
    # Every registration head starts at zero: the untrained network is the identity.
    assert torch.count_nonzero(out.ddf) == 0
    if name == "acsgregnet":
        assert out.seg_logits is None
    else:
        assert out.seg_logits.shape == (2, N_STRUCTURES + 1, *SHAPE)


@pytest.mark.parametrize("name", sorted(JOINT_MODELS))
def test_twenty_training_steps_on_a_shifted_blob_lower_the_loss(name):
    torch.manual_seed(0)
    net = build_joint_model(_config(name) | {"features": [2, 4, 8, 8, 8, 2]})
    loss_fn, batch = JOINT_LOSSES[name], _shifted_blob_batch()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)

    def current() -> float:
        # Both phases of the alternating DeepAtlas loss (steps 0 and 1); the others ignore the step.
        return sum(float(loss_fn(net, batch, s, {})[0]) for s in (0, 1))

    before = current()
    for step in range(20):
        loss, terms = loss_fn(net, batch, step, {})
        assert all(np.isfinite(v) for v in terms.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert current() < before


def test_unknown_architecture_and_bad_hyper_parameters_raise():
    with pytest.raises(UnknownModelError, match="unknown joint architecture"):
        build_joint_model(_config("voxelmorph"))
    with pytest.raises(ValueError, match="features"):
        build_joint_model(_config("deepatlas") | {"features": [4, 8, 16]})
    with pytest.raises(ValueError, match="task_weights"):
        build_joint_model(_config("cross-stitch") | {"options": {"task_weights": "some"}})
    with pytest.raises(ValueError, match="bad options"):
        build_joint_model(_config("dual-head") | {"options": {"depth": 3}})


def test_cross_stitch_unit_mixes_each_channel_by_its_2x2_matrix():
    unit = CrossStitch(2)
    assert torch.allclose(unit.weight[0], torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    with torch.no_grad():
        unit.weight.copy_(torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.5, 0.0], [-1.0, 1.0]]]))
    a, b = torch.rand(3, 2, 4, 4, 4), torch.rand(3, 2, 4, 4, 4)
    a2, b2 = unit(a, b)
    assert torch.allclose(a2[:, 0], a[:, 0] + 2 * b[:, 0])
    assert torch.allclose(b2[:, 0], 3 * a[:, 0] + 4 * b[:, 0])
    assert torch.allclose(a2[:, 1], 0.5 * a[:, 1])
    assert torch.allclose(b2[:, 1], -a[:, 1] + b[:, 1])
    with pytest.raises(ValueError, match="self_weight"):
        CrossStitch(2, self_weight=1.5)


def test_cumulative_sum_of_a_constant_gradient_is_a_linear_ddf():
    g = torch.tensor([1.5, 1.0, 0.75]).view(1, 3, 1, 1, 1).expand(1, 3, *SHAPE)
    ddf = integrate_gradient(g)
    for axis, slope in enumerate((0.5, 0.0, -0.25)):
        index = torch.arange(SHAPE[axis], dtype=torch.float32)
        view = [1, 1, 1]
        view[axis] = -1
        expected = (slope * (index + 1)).view(view).expand(SHAPE)
        assert torch.allclose(ddf[0, axis], expected)


def test_scaling_and_squaring_of_zero_velocity_is_zero_and_of_a_constant_a_translation():
    integrate = DVF2DDF(num_steps=7, padding_mode="border")
    assert torch.count_nonzero(integrate(torch.zeros(1, 3, *SHAPE))) == 0
    v = torch.tensor([1.5, -0.5, 0.25]).view(1, 3, 1, 1, 1).expand(1, 3, *SHAPE).contiguous()
    assert torch.allclose(integrate(v), v, atol=1e-4)


def test_affine_ddf_of_a_translation_and_of_a_scaling():
    t = torch.zeros(1, 3, 4)
    t[0, :, 3] = torch.tensor([2.0, -1.0, 0.5])
    ddf = affine_ddf(t, SHAPE)
    assert torch.allclose(ddf, t[0, :, 3].view(1, 3, 1, 1, 1).expand_as(ddf))
    s = torch.zeros(1, 3, 4)
    s[0, 0, 0] = 0.1  # A = diag(1.1, 1, 1): stretch along axis 0 about the grid centre
    ddf = affine_ddf(s, SHAPE)
    centre = (SHAPE[0] - 1) / 2
    assert torch.allclose(ddf[0, 0, :, 0, 0], 0.1 * (torch.arange(SHAPE[0]) - centre))
    assert torch.count_nonzero(ddf[0, 1:]) == 0


def test_warping_by_a_known_translation_moves_the_blob():
    moving = _blob((18.0, 8.0, 8.0))
    ddf = torch.zeros(1, 3, *SHAPE)
    ddf[:, 0] = 2.0  # fixed x looks up moving at x + 2 voxels along axis 0
    inside = (
        slice(None),
        slice(None),
        slice(0, SHAPE[0] - 2),
    )  # the last 2 are padding
    warped = warp_image(moving, ddf)[inside]
    assert torch.allclose(warped, _blob((16.0, 8.0, 8.0))[inside], atol=1e-4)


def test_folding_percent_of_identity_and_of_a_reflection():
    assert folding_percent(torch.zeros(3, *SHAPE)) == 0.0
    reflect = torch.zeros(3, *SHAPE)
    reflect[0] = -2.0 * torch.arange(SHAPE[0], dtype=torch.float32).view(-1, 1, 1)
    assert folding_percent(reflect) == 100.0


def test_synthetic_ddf_stays_within_its_stated_magnitude():
    """8 mm of smooth field, 4 mm of shift per axis, 2 degrees about the crop centre."""
    ddf = synthetic_ddf(SHAPE, np.random.default_rng(0), spacing_mm=4.0)
    assert ddf.shape == (3, *SHAPE)
    magnitude_mm = ddf.norm(dim=0).max() * 4.0
    radius_mm = 4.0 * float(np.linalg.norm(np.array(SHAPE) / 2))
    rotation_mm = radius_mm * np.deg2rad(2.0)
    assert 0 < magnitude_mm <= 8.0 + 4.0 * 3**0.5 + rotation_mm
    assert folding_percent(ddf) == 0.0


def test_joint_config_validation(tmp_path):
    path = tmp_path / "joint-x.json"
    config = {
        "name": "joint-x",
        "kind": "joint",
        "model": {
            "architecture": "deepatlas",
            "spacing_mm": [4.0, 4.0, 4.0],
            "structures": [],
        },
        "training": {"patch": [48, 40, 32]},
    }
    path.write_text(json.dumps(config))
    with pytest.raises(TrainingConfigError, match="multiples of 16"):
        load_joint_config(path)
    config["model"]["spacing_mm"] = [4.0, 4.0, 2.5]
    path.write_text(json.dumps(config))
    with pytest.raises(TrainingConfigError, match="isotropic"):
        load_joint_config(path)


def test_a_shipped_joint_model_loads_and_is_not_listed_for_segmentation(tmp_path):
    config = _config("dual-head") | {"kind": "joint", "name": "tiny-joint"}
    torch.save(build_joint_model(config).state_dict(), tmp_path / "tiny-joint.pt")
    (tmp_path / "tiny-joint.json").write_text(json.dumps(config))
    assert available_joint_models(tmp_path) == ["tiny-joint"]
    assert available_models(tmp_path) == []
    network, card = load_joint_model("tiny-joint", tmp_path)
    assert card["architecture"] == "dual-head" and not network.training
    with pytest.raises(UnknownModelError, match="not shipped"):
        load_joint_model("cross-stitch", tmp_path)


def test_the_shipped_joint_model_matches_its_card_and_keeps_the_contract():
    from engine.models.registry import WEIGHTS_DIR, sha256_of

    for name in available_joint_models():
        network, card = load_joint_model(name)
        assert card["kind"] == "joint" and card["architecture"] in JOINT_MODELS
        assert sha256_of(WEIGHTS_DIR / f"{name}.pt") == card["card"]["weights_sha256"]
        torch.manual_seed(0)
        fixed = torch.rand(1, 1, *SHAPE)
        with torch.no_grad():
            out = network(fixed, torch.roll(fixed, 1, dims=2))
        assert out.ddf.shape == (1, 3, *SHAPE) and torch.isfinite(out.ddf).all()
        assert folding_percent(out.ddf[0]) < 1.0
