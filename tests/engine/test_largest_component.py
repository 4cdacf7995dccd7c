"""keep_largest_component: each channel keeps its largest component above the
threshold; islands go to zero, everything else (below the threshold too) is kept."""

from __future__ import annotations

import numpy as np

from engine.infer.predict import keep_largest_component


def test_islands_are_zeroed_and_the_rest_kept():
    rng = np.random.default_rng(0)
    prob = rng.uniform(0.0, 0.4, (3, 30, 28, 26)).astype(np.float32)
    prob[0, 5:15, 5:15, 5:15] = 0.9  # the organ
    prob[0, 25:27, 20:22, 20:22] = 0.8  # an island far from it
    prob[0, 16:18, 5:7, 5:7] = 0.7  # an island next to it
    prob[1, 2:4, 2:4, 2:4] = 0.6  # one component only
    before = prob.copy()

    out = keep_largest_component(prob, 0.5)

    np.testing.assert_array_equal(prob, before)  # the input is not changed
    expected = before.copy()
    expected[0, 25:27, 20:22, 20:22] = 0
    expected[0, 16:18, 5:7, 5:7] = 0
    np.testing.assert_array_equal(out, expected)


def test_a_structure_smaller_than_any_organ_is_not_found():
    prob = np.zeros((2, 20, 20, 20), np.float32)
    prob[0, 2:4, 2:4, 2:4] = 0.9  # 8 voxels: a fragment
    prob[0, 10:12, 10:12, 10:11] = 0.8  # 4 voxels: a smaller one
    prob[1, 5:8, 5:8, 5:8] = 0.9  # 27 voxels: an organ
    prob[1, 15, 15, 15] = 0.7  # and its island

    out = keep_largest_component(prob, 0.5, min_voxels=10)

    assert not (out[0] > 0.5).any()
    assert (out[1] > 0.5).sum() == 27
