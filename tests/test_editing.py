"""webapp.delineation.editing: outlines checked and rasterised, interpolation, correction measures."""

from __future__ import annotations

import numpy as np
import pytest

from webapp.delineation import editing


def circle(n: int, radius: float = 40.0, centre: float = 50.0) -> list[list[float]]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([centre + radius * np.sin(t), centre + radius * np.cos(t)], axis=1).tolist()


def test_a_long_outline_that_does_not_cross_itself_is_filled():
    mask = editing.polygon_mask(circle(editing.MAX_POLYGON_POINTS), (100, 100))
    assert abs(mask.sum() - np.pi * 40**2) < 0.01 * np.pi * 40**2


def test_an_outline_crossing_itself_far_from_its_start_is_refused():
    points = circle(1500)
    points[700], points[800] = points[800], points[700]  # two vertices swapped: the path crosses itself
    with pytest.raises(editing.EditError, match="crosses itself"):
        editing.polygon_mask(points, (100, 100))


def test_too_many_points_are_refused():
    with pytest.raises(editing.EditError, match="at most"):
        editing.polygon_mask(circle(editing.MAX_POLYGON_POINTS + 1), (100, 100))


def test_an_outline_off_the_slice_is_refused():
    with pytest.raises(editing.EditError, match="covers no pixel"):
        editing.polygon_mask([[200, 200], [200, 210], [210, 210]], (100, 100))


def test_interpolation_is_linear_in_the_signed_distance():
    labels = np.zeros((40, 40, 5), np.uint8)
    yy, xx = np.mgrid[:40, :40]
    labels[..., 0][(yy - 20) ** 2 + (xx - 20) ** 2 <= 4**2] = 3  # radius 4 px at one end
    labels[..., 4][(yy - 20) ** 2 + (xx - 20) ** 2 <= 12**2] = 3  # radius 12 px at the other
    editing.interpolate(labels, "axial", 0, 4, 3, (1.0, 1.0))
    areas = [(labels[..., k] == 3).sum() for k in range(5)]
    radii = np.sqrt(np.array(areas) / np.pi)
    np.testing.assert_allclose(radii, [4, 6, 8, 10, 12], atol=0.5)


def test_added_path_length_counts_the_new_contour_only():
    reference = np.zeros((20, 20, 3), bool)
    reference[5:15, 5:15, 1] = True
    edited = reference.copy()
    edited[5:15, 15:18, 1] = True  # widened by 3 pixels on one side
    # The new boundary pixels: 3 + 3 along the strip's sides, 8 on its far edge between them.
    assert editing.added_path_length_mm(reference, edited, (2.0, 2.0, 3.0)) == 14 * 2.0
    assert editing.added_path_length_mm(reference, reference, (2.0, 2.0, 3.0)) == 0.0
