"""Property-based tests (hypothesis) of the geometry: DICOM voxel <-> patient, orientation
changes, and resampling to a model grid and back."""

from __future__ import annotations

import itertools

import numpy as np
import pydicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from engine.infer.grid import labels_to_input_grid, labels_to_model_grid
from engine.io.dicom_series import LPS_TO_RAS, read_series
from engine.volume import LabelMap, Volume
from tests.engine.phantom import write_phantom_series

spacings = st.tuples(*[st.floats(0.4, 5.0).map(lambda v: round(v, 3))] * 3)
origins = st.tuples(*[st.floats(-400, 400).map(lambda v: round(v, 2))] * 3)
rotations = st.tuples(*[st.floats(-1, 1)] * 4).filter(lambda q: np.linalg.norm(q) > 0.1)
SIGNED_PERMUTATIONS = [
    (perm, signs) for perm in itertools.permutations(range(3)) for signs in itertools.product((1, -1), repeat=3)
]


def _orientation(quaternion) -> tuple[float, ...]:
    matrix = Rotation.from_quat(np.asarray(quaternion) / np.linalg.norm(quaternion)).as_matrix()
    return tuple(round(float(v), 6) for v in (*matrix[:, 0], *matrix[:, 1]))


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(spacing=spacings, origin=origins, quaternion=rotations)
def test_dicom_voxels_map_to_their_slice_positions_and_back(tmp_path_factory, spacing, origin, quaternion):
    """Any orientation and spacing: voxel (0, 0, k) lands on slice k's Image Position
    (Patient), and the inverse affine brings every slice position back to (0, 0, k)."""
    folder = tmp_path_factory.mktemp("ct")
    hu = np.arange(4 * 3 * 5, dtype=np.float32).reshape(4, 3, 5)
    orientation = _orientation(quaternion)
    paths, expected = write_phantom_series(folder, hu, spacing=spacing, origin=origin, orientation=orientation)
    series = read_series(folder)
    np.testing.assert_array_equal(series.volume.array, hu)
    np.testing.assert_allclose(series.affine_lps, expected, atol=2e-3)
    inverse = np.linalg.inv(series.affine_lps)
    for k, path in enumerate(paths):
        position = [float(v) for v in pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient]
        np.testing.assert_allclose(series.affine_lps @ [0, 0, k, 1], [*position, 1], atol=2e-3)
        np.testing.assert_allclose(inverse @ [*position, 1], [0, 0, k, 1], atol=1e-3)
    np.testing.assert_allclose(series.volume.affine, LPS_TO_RAS @ series.affine_lps)


def _grid(permutation_index: int, spacing, origin) -> np.ndarray:
    perm, signs = SIGNED_PERMUTATIONS[permutation_index]
    affine = np.eye(4)
    affine[:3, :3] = 0
    for voxel_axis, (patient_axis, sign) in enumerate(zip(perm, signs, strict=True)):
        affine[patient_axis, voxel_axis] = sign * spacing[voxel_axis]
    affine[:3, 3] = origin
    return affine


def sorted_spacing(affine: np.ndarray) -> list[float]:
    """The spacing along R, A, S of an axis-aligned affine (the model grid's axis order)."""
    return [float(np.abs(affine[axis, :3]).max()) for axis in range(3)]


def _ball(shape, affine, centre_ras, radius_mm) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    ras = ijk @ affine[:3, :3].T + affine[:3, 3]
    return (np.linalg.norm(ras - centre_ras, axis=-1) <= radius_mm).astype(np.uint8)


@settings(max_examples=25, deadline=None)
@given(
    permutation_index=st.integers(0, len(SIGNED_PERMUTATIONS) - 1),
    spacing=st.tuples(*[st.sampled_from([1.0, 1.5, 2.0, 2.5])] * 3),
    origin=origins,
)
def test_reorienting_to_the_model_grid_and_back_is_exact_at_the_same_spacing(permutation_index, spacing, origin):
    """Any axis order and direction: reorientation to RAS at the input's own spacing and
    back is the identity on labels, and a voxel keeps its patient coordinates."""
    affine = _grid(permutation_index, spacing, origin)
    shape = (14, 11, 9)
    labels = np.zeros(shape, np.uint8)
    labels[3:9, 2:7, 4:8] = 1
    labels[10, 9, 1] = 1  # an off-centre voxel tells flips apart
    on_model = labels_to_model_grid(LabelMap(labels, affine), sorted_spacing(affine))
    model_affine = on_model.affine.numpy()
    assert np.all(np.diag(model_affine)[:3] > 0), "the model grid is RAS"
    ras_of_marker = affine @ [10, 9, 1, 1]
    marker_on_model = np.round(np.linalg.inv(model_affine) @ ras_of_marker).astype(int)[:3]
    assert on_model[0][tuple(marker_on_model)] == 1
    one_hot = on_model.float()
    back = labels_to_input_grid(one_hot, Volume(labels.astype(np.float32), affine), [1], 0.5).array == 1
    np.testing.assert_array_equal(back, labels.astype(bool))


@settings(max_examples=15, deadline=None)
@given(
    permutation_index=st.integers(0, len(SIGNED_PERMUTATIONS) - 1),
    spacing=st.tuples(*[st.floats(0.7, 2.0)] * 3),
    model_spacing=st.tuples(*[st.floats(1.0, 3.5)] * 3),
)
def test_a_structure_resampled_to_a_coarser_grid_and_back_keeps_its_place_and_shape(
    permutation_index, spacing, model_spacing
):
    """Any orientation and spacings: a 12 mm ball survives the trip to a coarser model grid
    and back with Dice >= 0.85 and its centre within one model voxel."""
    affine = _grid(permutation_index, spacing, (5.0, -7.0, 11.0))
    shape = tuple(int(np.ceil(40 / s)) for s in spacing)
    centre_ijk = np.array(shape) / 2
    centre = (affine @ [*centre_ijk, 1])[:3]
    ball = _ball(shape, affine, centre, 12.0)
    on_model = labels_to_model_grid(LabelMap(ball, affine), model_spacing)
    # Labels go to the model grid by nearest neighbour, come back as probabilities.
    probabilities = on_model.float()
    back = labels_to_input_grid(probabilities, Volume(ball.astype(np.float32), affine), [1], 0.5).array == 1
    dice = 2 * np.sum(back & (ball > 0)) / (back.sum() + ball.sum())
    assert dice >= 0.85
    moved = np.argwhere(back).mean(axis=0) - np.argwhere(ball).mean(axis=0)
    assert np.linalg.norm(affine[:3, :3] @ moved) <= max(model_spacing)
