"""Resampling to the model grid and back, and the evaluation metrics, in physical units."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from engine.infer.grid import image_to_model_grid, labels_to_input_grid, structures_to_input_grid
from engine.metrics import Agreement, agreement
from engine.volume import LabelMap, Volume

LPS_AXES_AFFINE = np.array([[-0.8, 0, 0, 40.0], [0, -0.8, 0, 30.0], [0, 0, 2.0, -20.0], [0, 0, 0, 1]])


def _sphere(shape, affine, centre_ras, radius_mm):
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    ras = ijk @ affine[:3, :3].T + affine[:3, 3]
    return np.linalg.norm(ras - centre_ras, axis=-1) <= radius_mm


def test_model_grid_is_ras_at_the_model_spacing():
    hu = np.where(_sphere((60, 50, 20), LPS_AXES_AFFINE, (20.0, 10.0, 0.0), 8), 1000.0, -1000.0)
    img = image_to_model_grid(Volume(hu.astype(np.float32), LPS_AXES_AFFINE), (2.0, 2.0, 2.0), (-1000, 1000))
    affine = img.affine.numpy()
    np.testing.assert_allclose(np.diag(affine)[:3], (2.0, 2.0, 2.0), atol=1e-6)  # RAS, positive steps
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    centre = np.argwhere(img[0].numpy() > 0.5).mean(axis=0)
    np.testing.assert_allclose(affine[:3, :3] @ centre + affine[:3, 3], (20.0, 10.0, 0.0), atol=1.0)


def test_probabilities_come_back_to_the_input_grid_as_labels():
    shape = (60, 50, 20)
    truth = _sphere(shape, LPS_AXES_AFFINE, (20.0, 10.0, 0.0), 8)
    model_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    model_affine[:3, 3] = (-10.0, -15.0, -20.0)
    prob = _sphere((30, 30, 20), model_affine, (20.0, 10.0, 0.0), 8).astype(np.float32)
    back = labels_to_input_grid(
        MetaTensor(torch.as_tensor(prob)[None], affine=torch.as_tensor(model_affine)),
        Volume(np.zeros(shape, np.float32), LPS_AXES_AFFINE),
        [3],
        0.5,
    )
    assert back.array.shape == shape and back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.affine, LPS_AXES_AFFINE)
    assert set(np.unique(back.array)) == {0, 3}
    pred = back.array == 3
    assert 2 * (pred & truth).sum() / (pred.sum() + truth.sum()) > 0.9


def test_labels_per_structure_box_equal_resampling_the_whole_grid():
    """Three overlapping blobs: resampling each inside its own box gives the voxels that
    resampling every channel on the whole input grid and taking the argmax gives."""
    from monai.transforms import ResampleToMatch

    rng = np.random.default_rng(0)
    model_affine = np.diag([3.5, 3.5, 2.5, 1.0])
    model_affine[:3, 3] = (-40.0, -30.0, -25.0)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in (24, 20, 22)], indexing="ij"))
    centres = ((10, 9, 10), (13, 10, 11), (6, 14, 8))
    prob = np.stack(
        [
            np.exp(-np.sum((ijk - np.reshape(c, (3, 1, 1, 1))) ** 2, axis=0) / 18.0)
            + rng.uniform(0, 0.05, ijk.shape[1:])
            for c in centres
        ]
    ).astype(np.float32)
    prob_mt = MetaTensor(torch.as_tensor(prob), affine=torch.as_tensor(model_affine))
    reference = Volume(np.zeros((70, 64, 40), np.float32), LPS_AXES_AFFINE)
    template = MetaTensor(
        torch.zeros((1, *reference.array.shape)),
        affine=torch.as_tensor(reference.affine),
    )
    whole = ResampleToMatch(mode="bilinear", padding_mode="zeros")(prob_mt, img_dst=template).numpy()
    expected = np.where(whole.max(axis=0) > 0.5, np.array([2, 5, 7])[whole.argmax(0)], 0)
    got = labels_to_input_grid(prob_mt, reference, [2, 5, 7], 0.5).array
    assert set(np.unique(expected)) == {0, 2, 5, 7}
    np.testing.assert_array_equal(got, expected)

    # Each structure on its own keeps the voxels the label map gives to another.
    structures = structures_to_input_grid(prob_mt, reference, 0.5)
    for c, structure in enumerate(structures):
        own = structure.mask(reference.array.shape, 0.5)
        np.testing.assert_array_equal(own, whole[c] > 0.5)
        assert (own & (got != [2, 5, 7][c])).any()  # overlapping voxels another structure won


def test_dice_and_hd95_in_mm():
    a = np.zeros((20, 20, 20), bool)
    a[5:10, 5:10, 5:10] = True
    b = np.roll(a, 2, axis=2)  # shifted by 2 voxels along K = 6 mm at 3 mm spacing
    found = agreement(a, b, (1.0, 1.0, 3.0))
    assert found.dice == pytest.approx(0.6)
    assert found.hd95_mm == pytest.approx(6.0)
    assert agreement(a, np.zeros_like(a), (1.0, 1.0, 1.0)).hd95_mm is None
    assert agreement(a, a, (1.0, 1.0, 3.0)) == Agreement(1.0, 0.0, 0.0)


def test_surface_metrics_are_those_of_monai():
    """The NumPy metrics give MONAI's values (compute_dice, symmetric
    compute_average_surface_distance, compute_hausdorff_distance at percentile 95)."""
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
    )
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for _ in range(10):
        shape = tuple(int(n) for n in rng.integers(8, 24, 3))
        a, b = (ndimage.binary_dilation(rng.random(shape) > 0.99, iterations=2) for _ in range(2))
        if not a.any() or not b.any():
            continue
        spacing = tuple(float(s) for s in rng.uniform(0.5, 3.0, 3))
        p, t = torch.as_tensor(a[None, None]), torch.as_tensor(b[None, None])
        found = agreement(a, b, spacing)
        assert found.dice == pytest.approx(float(compute_dice(p, t, ignore_empty=False)[0, 0]))
        msd = compute_average_surface_distance(p, t, symmetric=True, spacing=spacing)
        assert found.msd_mm == pytest.approx(float(msd[0, 0]), abs=1e-4)
        hd95 = compute_hausdorff_distance(p, t, percentile=95, spacing=spacing)
        assert found.hd95_mm == pytest.approx(float(hd95[0, 0]), abs=1e-4)


def test_test_time_mirroring_swaps_left_and_right_back():
    """A network that sees only the left half: mirrored inference finds the structure on
    both sides, each under its own name."""
    import torch

    from engine.infer.predict import predict_probabilities, test_time_mirror

    class LeftHalf(torch.nn.Module):
        def forward(self, x):  # channel 0 "Parotid_R" where x > 0.5 in the first half of X
            out = torch.full((x.shape[0], 2, *x.shape[2:]), -20.0)
            half = x.shape[2] // 2
            out[:, 0, :half] = torch.where(x[:, 0, :half] > 0.5, 20.0, -20.0)
            return out

    image = torch.zeros(1, 1, 16, 8, 8)
    image[0, 0, 2:4] = 1.0  # in the half the network sees
    image[0, 0, 12:14] = 1.0  # its mirror image
    config = {"structures": [{"name": "Parotid_R"}, {"name": "Parotid_L"}], "test_time_mirror": True}
    plain = predict_probabilities(LeftHalf(), image, (16, 8, 8), torch.device("cpu"))
    mirrored = predict_probabilities(LeftHalf(), image, (16, 8, 8), torch.device("cpu"), test_time_mirror(config))
    assert plain[0, 1].max() < 0.01  # without mirroring no Parotid_L at all
    assert mirrored[0, 0, 2:4].min() > 0.49 and mirrored[0, 1, 12:14].min() > 0.49
    assert mirrored[0, 0, 12:14].max() < 0.01 and mirrored[0, 1, 2:4].max() < 0.01
    assert test_time_mirror({"structures": config["structures"]}) is None


def test_bfloat16_inference_only_where_the_card_allows_it_and_the_device_computes_it(monkeypatch):
    """The card's choice alone does not switch bfloat16 on: a CPU without native bfloat16
    instructions (many times slower there) stays in float32, CUDA always can, and
    DELINEO_INFERENCE_FLOAT32=1 keeps float32 everywhere."""
    import torch

    import engine.infer.predict as predict

    allowed, cpu, cuda = {"inference_bfloat16": True}, torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(predict, "cpu_has_native_bfloat16", lambda: False)
    assert not predict.inference_bfloat16(allowed, cpu)
    assert predict.inference_bfloat16(allowed, cuda)
    monkeypatch.setattr(predict, "cpu_has_native_bfloat16", lambda: True)
    assert predict.inference_bfloat16(allowed, cpu)
    assert not predict.inference_bfloat16({}, cpu) and not predict.inference_bfloat16({}, cuda)
    monkeypatch.setenv("DELINEO_INFERENCE_FLOAT32", "1")  # the same contours on every machine
    assert not predict.inference_bfloat16(allowed, cpu) and not predict.inference_bfloat16(allowed, cuda)


def test_bfloat16_windows_are_blended_in_float32():
    """Under bfloat16 autocast the convolution runs in bfloat16 and the probabilities come
    back float32, within bfloat16's rounding of the float32 ones."""
    import torch

    from engine.infer.predict import predict_probabilities

    torch.manual_seed(0)
    network = torch.nn.Conv3d(1, 2, 3, padding=1)
    seen = []
    network.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    image = torch.rand(1, 1, 24, 20, 12)
    full = predict_probabilities(network, image, (16, 16, 8), torch.device("cpu"))
    half = predict_probabilities(network, image, (16, 16, 8), torch.device("cpu"), bfloat16=True)
    assert half.dtype == torch.float32 and full.dtype == torch.float32
    assert torch.bfloat16 in seen and torch.float32 in seen
    assert 0 < (half - full).abs().max() < 0.02


def test_label_map_boxes_are_the_same_in_either_memory_order():
    rng = np.random.default_rng(5)
    array = np.zeros((30, 20, 10), dtype=np.uint8)
    for value in (1, 2, 4):
        i, j, k = rng.integers(0, 8, 3)
        array[i : i + 9, j + 2 : j + 11, k : k + 3] = value
    c_order = LabelMap(np.ascontiguousarray(array), np.eye(4)).boxes
    fortran = LabelMap(np.asfortranarray(array), np.eye(4)).boxes
    assert fortran == c_order
    assert sorted(c_order) == [1, 2, 4]
    assert c_order[4] == tuple(slice(int(a.min()), int(a.max()) + 1) for a in np.nonzero(array == 4))
