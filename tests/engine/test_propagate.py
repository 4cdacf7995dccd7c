"""Contour propagation: DDF conventions (voxels <-> mm, RAS, signs), one-hot label
warping, the Jacobian check, the elastix methods on a known shift, the joint-model
plumbing (a stand-in network that follows the JointOutput contract) and the CLI."""

from __future__ import annotations

import json
import tracemalloc

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.networks.blocks import Warp

from engine.__main__ import main
from engine.errors import InputError, ModelError
from engine.infer import propagate as propagate_module
from engine.infer.displacement import (
    FieldOnFixed,
    Grid,
    argmax_on_fixed,
    ddf_mm_to_voxels,
    jacobian_determinant,
    moving_coords,
    resample_onto,
    sample,
    warp_labels,
    working_grid,
)
from engine.infer.propagate import (
    PROPAGATION_MODELS,
    compose_ddf,
    load_method,
    network_region,
    propagate,
    taper,
)
from engine.io.contour_input import read_contours
from engine.io.dicom_series import read_series
from engine.io.nifti import read_displacement_field, write_displacement_field
from engine.io.rtstruct import build_rtstruct, write_rtstruct
from engine.io.rtstruct_import import import_rtstruct
from engine.metrics import surface_metrics
from engine.models.joint.base import JointOutput
from engine.models.registry import Structure, UnknownModelError
from engine.train.synthetic_deformation import make_pair
from engine.volume import LabelMap, Volume
from tests.engine.phantom import write_phantom_series

# Fixed (daily) grid: L-P-S voxel axes (as DICOM), anisotropic, off-centre.
FIXED_AFFINE = np.array([[-2.0, 0, 0, 40.0], [0, -2.5, 0, 45.0], [0, 0, 3.0, -36.0], [0, 0, 0, 1]])
# Moving (planning) grid: another orientation and spacing.
MOVING_AFFINE = np.array([[1.5, 0, 0, -42.0], [0, 3.0, 0, -48.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])
SHIFT_RAS_MM = np.array([5.0, -4.0, 6.0])  # moving content = fixed content + shift
BOX = Structure(1, "Box", (255, 0, 0), "")


def _world(shape, affine):
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _anatomy(points: np.ndarray) -> np.ndarray:
    """HU of an asymmetric phantom at RAS points (..., 3): a soft-tissue ellipsoid body
    with three bony blobs of different sizes, smooth enough to register."""
    r, a, s = points[..., 0], points[..., 1], points[..., 2]
    body = 1.0 / (1.0 + np.exp(((r / 30) ** 2 + (a / 34) ** 2 + (s / 28) ** 2 - 1) * 12))
    hu = -1000.0 + 1040.0 * body
    for centre, width, value in [
        ((10, 8, 4), 5.0, 900.0),
        ((-12, -6, -8), 7.0, 600.0),
        ((2, -14, 12), 4.0, 1200.0),
    ]:
        d2 = ((points - np.array(centre, float)) ** 2).sum(-1)
        hu += value * np.exp(-d2 / (2 * width**2))
    return hu.astype(np.float32)


def _box(points: np.ndarray) -> np.ndarray:
    """A 20 x 16 x 18 mm box (the structure), RAS points (..., 3) -> bool."""
    lo, hi = np.array([-8.0, -6.0, -9.0]), np.array([12.0, 10.0, 9.0])
    return np.all((points >= lo) & (points <= hi), axis=-1)


def _pair(fixed_shape=(40, 36, 24), moving_shape=(56, 32, 32)):
    """Fixed and moving phantoms on different grids; the moving one is the fixed one's
    content moved by ``SHIFT_RAS_MM``, so the true DDF is +SHIFT everywhere."""
    fixed_world = _world(fixed_shape, FIXED_AFFINE)
    moving_world = _world(moving_shape, MOVING_AFFINE)
    fixed = Volume(_anatomy(fixed_world), FIXED_AFFINE)
    moving = Volume(_anatomy(moving_world - SHIFT_RAS_MM), MOVING_AFFINE)
    labels = LabelMap(_box(moving_world - SHIFT_RAS_MM).astype(np.uint8), MOVING_AFFINE)
    return fixed, moving, labels, _box(fixed_world)


def test_sampling_follows_monai_warp():
    """Our sampler at x + ddf(x) is MONAI's Warp: the DDF convention is Warp's."""
    gen = torch.Generator().manual_seed(0)
    image = torch.rand((2, 9, 8, 7), generator=gen)
    ddf = torch.randn((3, 9, 8, 7), generator=gen) * 1.5
    identity = torch.stack(torch.meshgrid(*[torch.arange(n) for n in (9, 8, 7)], indexing="ij")).float()
    ours = sample(image, identity + ddf, "bilinear", "border")
    theirs = Warp("bilinear", "border")(image[None], ddf[None])[0]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_working_grid_is_ras_covers_the_fixed_scan_and_divides_by_16():
    fixed = Grid((40, 36, 24), FIXED_AFFINE)
    grid = working_grid(fixed, (4.0, 4.0, 4.0))
    assert all(n % 16 == 0 for n in grid.shape)
    np.testing.assert_allclose(np.diag(grid.affine)[:3], [4.0, 4.0, 4.0])
    corners = _world((40, 36, 24), FIXED_AFFINE)[[0, -1]][:, [0, -1]][:, :, [0, -1]]
    voxels = (corners.reshape(-1, 3) - grid.affine[:3, 3]) / 4.0
    assert voxels.min() >= 0 and np.all(voxels.max(axis=0) <= np.array(grid.shape) - 1)
    with pytest.raises(ValueError):
        working_grid(fixed, (0.0, 4.0, 4.0))


def test_voxel_ddf_becomes_mm_in_ras_on_an_anisotropic_flipped_grid():
    fixed = Grid((20, 18, 12), FIXED_AFFINE)
    grid = working_grid(fixed, (3.0, 2.0, 4.0))
    ddf = torch.tensor([1.5, -2.0, 0.5]).reshape(3, 1, 1, 1).expand(3, *grid.shape)
    ddf_mm = FieldOnFixed(ddf, grid, fixed).to_array()
    assert ddf_mm.shape == (20, 18, 12, 3) and ddf_mm.dtype == np.float32
    np.testing.assert_allclose(ddf_mm[3, 4, 5], [4.5, -4.0, 2.0], atol=1e-5)
    # Back to the fixed grid's own voxels: its I and J axes run along L and P.
    back = ddf_mm_to_voxels(ddf_mm, FIXED_AFFINE)
    np.testing.assert_allclose(back[:, 3, 4, 5], [-2.25, 1.6, 2.0 / 3.0], atol=1e-5)


def test_labels_are_warped_as_one_hot_and_a_thin_structure_survives():
    """A one-voxel plate (label 1) against a block (label 3), shifted 0.3 voxel: no label
    2 appears (interpolating integers would make one), and the plate stays."""
    array = np.zeros((16, 12, 10), np.uint8)
    array[6, 2:10, 2:8] = 1
    array[7:12, 2:10, 2:8] = 3
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    grid = Grid(array.shape, affine)
    ddf_mm = np.zeros((*array.shape, 3), np.float32)
    ddf_mm[..., 0] = 0.3  # fixed point p <- moving p + 0.3 mm along R
    out = warp_labels(LabelMap(array, affine), [1, 3], grid, ddf_mm)
    assert set(np.unique(out)) == {0, 1, 3}
    assert (out == 1).sum() == (array == 1).sum()  # the plate: still one voxel thick
    np.testing.assert_array_equal(out[6] == 1, array[6] == 1)


def test_jacobian_identity_has_no_folding_and_a_folding_field_does():
    identity = torch.zeros((3, 12, 12, 12))
    assert torch.allclose(jacobian_determinant(identity), torch.ones(12, 12, 12))
    folding = torch.zeros((3, 12, 12, 12))
    x = torch.arange(12.0).reshape(12, 1, 1)
    folding[0] = torch.where(x < 6, -2.0 * x, -12.0 + 0.0 * x)  # x -> -x: reversed
    det = jacobian_determinant(folding)
    assert (det <= 0).float().mean() > 0.3
    scaling = torch.zeros((3, 12, 12, 12))
    scaling[1] = 0.5 * torch.arange(12.0).reshape(1, 12, 1)  # stretch, no fold
    assert torch.allclose(jacobian_determinant(scaling), torch.full((12, 12, 12), 1.5))


@pytest.mark.parametrize("method", ["rigid", "affine", "elastix-bspline"])
def test_elastix_methods_recover_a_known_shift_in_mm(method):
    """Real elastix binary: moving = fixed content + (5, -4, 6) mm RAS on other grids;
    the DDF in mm must be that shift, with that sign, along R, A, S."""
    fixed, moving, labels, truth = _pair()
    result = propagate(fixed, moving, labels, [BOX], method)
    inside = truth  # where the content is, not the empty air around it
    median = np.median(result.field.to_array()[inside], axis=0)
    np.testing.assert_allclose(median, SHIFT_RAS_MM, atol=0.6)
    dice, _, _ = surface_metrics(result.labels.array == 1, truth, fixed.spacing)
    assert dice > 0.85
    assert result.folding["folding_percent"] == 0.0
    assert result.direct_labels is None
    assert result.measures[0]["dice_vs_direct"] is None


class StandIn(torch.nn.Module):
    """Follows the joint-model contract: a constant DDF of ``shift_mm`` (converted to
    working-grid voxels of ``spacing``) and a 'segmentation' of the bright fixed voxels."""

    def __init__(self, config: dict):
        super().__init__()
        self.shift_voxels = torch.nn.Parameter(
            torch.tensor(config["shift_mm"]) / config["spacing_mm"], requires_grad=False
        )
        self.folds = bool(config.get("folds"))

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> JointOutput:
        b, _, *spatial = fixed.shape
        ddf = self.shift_voxels.reshape(1, 3, 1, 1, 1).expand(b, 3, *spatial).clone()
        if self.folds:  # a zigzag along the first axis: slope -1.2 folds (det -0.2)
            phase = torch.arange(spatial[0], dtype=torch.float32) % 4
            zigzag = torch.where(phase <= 2, -1.2 * phase, -1.2 * (4 - phase))
            ddf[:, 0] += zigzag.reshape(-1, 1, 1)
        bright = (fixed > 0.45).float() * 20.0 - 10.0
        return JointOutput(ddf, torch.cat([torch.zeros_like(bright), bright], dim=1))


@pytest.fixture
def joint_weights(tmp_path, monkeypatch):
    """A shipped stand-in joint model 'standin' (and a folding one) in a weights folder,
    built by ``engine.models.joint.build_joint_model`` replaced with ``StandIn``."""
    import engine.models.joint as joint_models

    monkeypatch.setattr(joint_models, "build_joint_model", StandIn)
    weights = tmp_path / "weights"
    weights.mkdir()
    cards = [
        ("standin", SHIFT_RAS_MM, False, "none"),
        ("standin-folding", SHIFT_RAS_MM, True, "none"),
        # Registers nothing itself: what it gets right, the pre-alignment did.
        ("standin-rigid", np.zeros(3), False, "rigid"),
    ]
    for name, shift, folds, prealign in cards:
        config = {
            "kind": "joint",
            "architecture": "standin",
            "spacing_mm": 4.0,
            "window_hu": [-1000.0, 1500.0],
            "shift_mm": shift.tolist(),
            "folds": folds,
            "prealign": prealign,
            "structures": [{"label": 1, "name": "BOX", "color": [255, 0, 0]}],
        }
        (weights / f"{name}.json").write_text(json.dumps(config))
        torch.save(StandIn(config).state_dict(), weights / f"{name}.pt")
    (weights / "hn-oar.json").write_text(json.dumps({"architecture": "ResSEUNet"}))
    torch.save({}, weights / "hn-oar.pt")
    monkeypatch.setattr(propagate_module, "WEIGHTS_DIR", weights)
    return weights


def test_joint_model_ddf_and_direct_segmentation_plumbing(joint_weights):
    assert PROPAGATION_MODELS() == [
        "rigid",
        "affine",
        "elastix-bspline",
        "standin",
        "standin-folding",
        "standin-rigid",
    ]
    fixed, moving, labels, truth = _pair()
    result = propagate(fixed, moving, labels, [BOX], "standin")
    np.testing.assert_allclose(result.field.to_array()[5, 6, 7], SHIFT_RAS_MM, atol=1e-4)
    dice, _, _ = surface_metrics(result.labels.array == 1, truth, fixed.spacing)
    assert dice > 0.9
    # The direct segmentation (bright voxels) keeps the contours' label value for the
    # structure named alike ("BOX" ~ "Box"); it is not the box, so they disagree.
    assert set(np.unique(result.direct_labels.array)) == {0, 1}
    entry = result.measures[0]
    assert entry["dice_vs_direct"] < 0.7 and entry["msd_mm_vs_direct"] > 0
    assert "disagrees with the direct segmentation" in entry["warning"]
    assert result.folding["folding_percent"] == 0.0


def test_the_field_is_written_slab_by_slab_and_reads_back_as_it_was(tmp_path):
    """The fixed-grid field is never held whole: writing it allocates less than one of its
    three components (tracemalloc; 600 MB for the whole field at 512 x 512 x 200), and
    the file holds the same (I, J, K, 3) mm values as the field read as one array."""
    grid = Grid((16, 16, 16), np.diag([16.0, 16.0, 8.0, 1.0]))
    fixed = Grid((256, 256, 128), FIXED_AFFINE)
    ddf = torch.stack([torch.linspace(-2.0, 3.0, 16 * 16 * 16).reshape(16, 16, 16) * s for s in (1.0, -0.5, 0.25)])
    field = FieldOnFixed(ddf, grid, fixed)
    component_bytes = int(np.prod(fixed.shape)) * 4
    tracemalloc.start()
    try:
        write_displacement_field(field, FIXED_AFFINE, tmp_path / "ddf.nii.gz")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < component_bytes / 2, f"{peak / 1e6:.0f} MB traced, one component is {component_bytes / 1e6:.0f} MB"
    written, affine = read_displacement_field(tmp_path / "ddf.nii.gz")
    np.testing.assert_allclose(written, field.to_array(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(affine, FIXED_AFFINE)
    lo, hi = field.bounds()
    whole = field.to_array().reshape(-1, 3)
    assert np.all(lo <= whole.min(axis=0)) and np.all(hi >= whole.max(axis=0))


def test_compose_ddf_applies_the_inner_field_then_the_outer():
    """outer(y) = M y + b (linear), inner = c (constant): u(x) = c + M (x + c) + b."""
    shape = (12, 10, 8)
    x = torch.stack(torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij")).float()
    m = torch.tensor([[0.02, 0.0, 0.01], [0.0, -0.03, 0.0], [0.01, 0.0, 0.02]])
    b = torch.tensor([0.5, -0.25, 0.75]).view(3, 1, 1, 1)
    outer = torch.einsum("ab,b...->a...", m, x) + b
    c = torch.tensor([1.5, -1.0, 0.5]).view(3, 1, 1, 1)
    inner = c.expand(3, *shape).clone()
    expected = c + torch.einsum("ab,b...->a...", m, x + c) + b
    got = compose_ddf(outer, inner)
    interior = (slice(None), slice(2, -2), slice(2, -2), slice(2, -2))
    torch.testing.assert_close(got[interior], expected[interior], atol=1e-5, rtol=0)


def test_the_network_box_stays_in_the_grid_and_its_field_fades_at_inner_faces():
    shape = (128, 96, 40)
    region = network_region(shape, np.array([10.0, 90.0, 20.0]))
    assert region == (slice(0, 64), slice(32, 96), slice(0, 40))
    weights = taper(shape, region)
    assert weights.shape == (64, 64, 40)
    # Faces on the grid's edge keep the full field; the inner faces fade it to near 0.
    assert weights[0, 32, 20] == 1.0 and weights[32, -1, 20] == 1.0
    assert weights[32, 32, 0] == 1.0 and weights[32, 32, -1] == 1.0
    assert weights[-1, 32, 20] < 0.2 and weights[32, 0, 20] < 0.2
    assert weights[-5, 32, 20] == 1.0 and weights[32, 4, 20] == 1.0


def test_a_joint_model_registers_after_its_cards_prealignment(joint_weights):
    """A network that adds nothing, behind a rigid pre-alignment (real elastix): the
    composed field is the known shift, in mm along R, A, S."""
    fixed, moving, labels, truth = _pair()
    result = propagate(fixed, moving, labels, [BOX], "standin-rigid")
    median = np.median(result.field.to_array()[truth], axis=0)
    np.testing.assert_allclose(median, SHIFT_RAS_MM, atol=0.6)
    dice, _, _ = surface_metrics(result.labels.array == 1, truth, fixed.spacing)
    assert dice > 0.85


def test_a_card_with_an_unknown_prealignment_is_refused(joint_weights):
    card = joint_weights / "standin.json"
    card.write_text(card.read_text().replace('"none"', '"bspline"'))
    with pytest.raises(ModelError, match="prealign must be one of"):
        load_method("standin")


def test_folding_inside_a_structure_is_reported_and_warned(joint_weights):
    fixed, moving, labels, _ = _pair()
    result = propagate(fixed, moving, labels, [BOX], "standin-folding")
    assert result.folding["folding_percent"] > 0
    assert result.folding["min_jacobian"] <= 0
    entry = result.measures[0]
    assert entry["folding_percent_inside"] > 0
    assert "folds inside it" in entry["warning"]


def test_unknown_or_segmentation_model_is_refused(joint_weights):
    with pytest.raises(UnknownModelError, match="not a propagation model"):
        load_method("hn-oar")
    with pytest.raises(UnknownModelError, match="not a propagation model"):
        load_method("nonsense")


def test_contours_from_a_mask_folder_keep_small_structures_whole(tmp_path):
    affine = np.eye(4)
    big = np.zeros((10, 10, 10), np.uint8)
    big[2:8, 2:8, 2:8] = 1
    small = np.zeros_like(big)
    small[4:6, 4:6, 4:6] = 1
    nib.save(nib.Nifti1Image(big, affine), tmp_path / "PTV.nii.gz")
    nib.save(nib.Nifti1Image(small, affine), tmp_path / "Cord.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros_like(big), affine), tmp_path / "Empty.nii.gz")
    labels, structures, notes = read_contours(tmp_path, None)
    names = {s.name: s.label for s in structures}
    assert set(names) == {"PTV", "Cord"}
    assert (labels.array == names["Cord"]).sum() == 8
    assert (labels.array == names["PTV"]).sum() == 216 - 8
    assert any("overlaps" in n for n in notes) and any("Empty" in n for n in notes)
    rtstruct = tmp_path / "rs.dcm"
    rtstruct.write_bytes(b"not dicom")
    with pytest.raises(InputError, match="DICOM series"):
        read_contours(rtstruct, None)


def test_synthetic_pair_truth_maps_daily_points_to_planning_points():
    """A bright point of the planning CT at q appears in the daily CT at p with
    p + u(p) = q: the synthetic truth follows the propagation convention."""
    shape, affine = (48, 44, 40), np.diag([2.0, 2.0, 2.5, 1.0])
    planning = np.full(shape, -1000.0, np.float32)
    world = _world(shape, affine)
    q = np.array([40.0, 50.0, 45.0])
    planning += 2000.0 * np.exp(-((world - q) ** 2).sum(-1) / (2 * 2.5**2))
    labels = LabelMap((planning > 0).astype(np.uint8), affine)
    pair = make_pair(Volume(planning, affine), labels, [1], seed=3, noise_hu=0.0)
    assert pair.params["min_jacobian"] > 0
    weights = np.clip(pair.daily.array + 1000.0, 0, None)
    p = (world * weights[..., None]).sum((0, 1, 2)) / weights.sum()
    u = pair.ddf_mm[tuple(np.round((p - affine[:3, 3]) / np.diag(affine)[:3]).astype(int))]
    np.testing.assert_allclose(p + u, q, atol=1.0)
    assert np.abs(p - q).max() > 2.0  # the point did move
    assert pair.daily_labels.array.sum() > 0


def _write_dicom(folder, shape, spacing, origin_lps, content):
    """An axial phantom series (voxel axes L, P, S) whose HU are ``content(RAS points)``."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [-origin_lps[0], -origin_lps[1], origin_lps[2]]
    hu = content(_world(shape, affine))
    write_phantom_series(folder, np.rint(hu).astype(np.int16), spacing, origin_lps)
    return read_series(folder)


def _dicom_pair(tmp_path):
    """Daily and planning DICOM series (the planning one = daily content + SHIFT) and
    an RTSTRUCT of the box drawn on the planning series."""
    daily = tmp_path / "daily"
    _write_dicom(daily, (40, 36, 24), (2.0, 2.5, 3.0), (-40.0, -45.0, -36.0), _anatomy)
    planning = _write_dicom(
        tmp_path / "planning",
        (56, 32, 32),
        (1.5, 3.0, 2.5),
        (-42.0, -48.0, -40.0),
        lambda points: _anatomy(points - SHIFT_RAS_MM),
    )
    box = _box(_world(planning.volume.array.shape, planning.volume.affine) - SHIFT_RAS_MM)
    structure = Structure(1, "Box", (255, 0, 0), "ORGAN")
    ds = build_rtstruct(
        LabelMap(box.astype(np.uint8), planning.volume.affine),
        planning,
        [structure],
        "test",
        "0" * 64,
    )
    write_rtstruct(ds, tmp_path / "planning_rs.dcm")
    return daily, tmp_path / "planning", tmp_path / "planning_rs.dcm"


def test_cli_writes_every_output_and_the_rtstruct_references_the_daily_series(tmp_path, joint_weights, capsys):
    daily, planning, rtstruct = _dicom_pair(tmp_path)
    out = tmp_path / "out"
    code = main(
        [
            "propagate",
            "--fixed",
            str(daily),
            "--moving",
            str(planning),
            "--contours",
            str(rtstruct),
            "--model",
            "standin",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    for name in [
        "ddf.nii.gz",
        "labels.nii.gz",
        "structures.json",
        "structures/Box.nii.gz",
        "direct_labels.nii.gz",
        "rtstruct.dcm",
        "report.json",
    ]:
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    assert report == json.loads(capsys.readouterr().out)
    assert report["model"] == "standin" and report["references_daily_series"]
    entry = report["structures"][0]
    for key in [
        "name",
        "label",
        "volume_ml",
        "dice_vs_direct",
        "msd_mm_vs_direct",
        "hd95_mm_vs_direct",
        "folding_percent_inside",
        "warning",
    ]:
        assert key in entry
    assert entry["name"] == "Box" and entry["volume_ml"] > 0
    field = nib.load(out / "ddf.nii.gz")
    assert field.shape == (40, 36, 24, 3) and field.header.get_intent()[0] == "vector"
    np.testing.assert_allclose(np.asarray(field.dataobj)[20, 18, 12], SHIFT_RAS_MM, atol=1e-3)

    series = read_series(daily)
    rs = pydicom.dcmread(out / "rtstruct.dcm")
    ref = rs.ReferencedFrameOfReferenceSequence[0]
    assert ref.FrameOfReferenceUID == series.frame_of_reference_uid
    referenced = ref.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == series.series_instance_uid
    assert rs.StudyInstanceUID == series.study_instance_uid
    roi = import_rtstruct(rs, series)[0]
    labels = nib.load(out / "labels.nii.gz")
    np.testing.assert_array_equal(roi.mask, np.asarray(labels.dataobj) == 1)


def test_cli_answers_a_planning_nifti_with_an_rtstruct_with_exit_2(tmp_path, capsys):
    fixed, moving, _, _ = _pair()
    nib.save(nib.Nifti1Image(fixed.array, fixed.affine), tmp_path / "daily.nii.gz")
    nib.save(nib.Nifti1Image(moving.array, moving.affine), tmp_path / "planning.nii.gz")
    (tmp_path / "rs.dcm").write_bytes(b"x")
    code = main(
        [
            "propagate",
            "--fixed",
            str(tmp_path / "daily.nii.gz"),
            "--moving",
            str(tmp_path / "planning.nii.gz"),
            "--contours",
            str(tmp_path / "rs.dcm"),
            "--model",
            "rigid",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    assert "DICOM series" in capsys.readouterr().err


def _everywhere_argmax(probabilities: torch.Tensor, grid: Grid, fixed: Grid) -> np.ndarray:
    """argmax_on_fixed's definition, sampled at every fixed voxel."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in fixed.shape], indexing="ij"))
    to_grid = np.linalg.inv(grid.affine) @ fixed.affine
    coords = np.einsum("ab,b...->a...", to_grid[:3, :3], ijk) + to_grid[:3, 3].reshape(3, 1, 1, 1)
    return sample(probabilities, torch.as_tensor(coords)).argmax(dim=0).numpy()


def test_argmax_on_fixed_visits_only_where_a_structure_can_win_and_agrees_everywhere():
    """Small blobs of two structures on an oblique working grid: the result equals the
    argmax sampled at every fixed voxel, background included (the box is exact)."""
    rng = np.random.default_rng(3)
    logits = torch.as_tensor(rng.normal(0, 0.5, (3, 24, 20, 16)), dtype=torch.float32)
    logits[1, 5:9, 6:10, 4:8] += 6.0
    logits[2, 14:20, 9:15, 8:12] += 6.0
    probabilities = torch.softmax(logits, dim=0)
    working = _oblique(10, (2.0, 2.0, 3.0), (-20.0, -15.0, -20.0))
    grid = Grid(tuple(probabilities.shape[1:]), working)
    fixed = Grid((50, 44, 52), _translation(25.0, 20.0, -22.0) @ np.diag([-1.0, -1.0, 1.0, 1.0]))
    out = argmax_on_fixed(probabilities, grid, fixed)
    expected = _everywhere_argmax(probabilities, grid, fixed)
    assert {1, 2} <= set(np.unique(out))
    np.testing.assert_array_equal(out, expected)


def test_warp_labels_visits_only_where_a_structure_can_land_and_agrees_everywhere():
    """A smooth, non-uniform field on a large fixed grid: the label map equals the one
    from sampling every fixed voxel (each structure's channel over the whole grid)."""
    array = np.zeros((30, 28, 20), np.uint8)
    array[8:12, 10:15, 5:9] = 1
    array[18:24, 6:9, 10:16] = 2
    moving_affine = np.diag([1.5, 1.5, 2.0, 1.0])
    labels = LabelMap(array, moving_affine)
    fixed = Grid((60, 50, 45), _translation(-3.0, -10.0, 1.0))
    i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in fixed.shape], indexing="ij")
    ddf_mm = np.stack([-15 + np.sin(j / 9), 12 + np.cos(i / 11), -10 + 0.5 * np.sin(k / 7)], axis=-1)
    ddf_mm = ddf_mm.astype(np.float32)
    out = warp_labels(labels, [1, 2], fixed, ddf_mm)
    channels = []
    for value in (1, 2):
        onehot = torch.as_tensor(array == value, dtype=torch.float32)[None]
        coords = moving_coords(ddf_mm, fixed, moving_affine, tuple(slice(0, n) for n in fixed.shape))
        channels.append(sample(onehot, coords)[0].numpy())
    stacked = np.stack([1.0 - channels[0] - channels[1], *channels])
    expected = stacked.argmax(axis=0).astype(np.uint8)
    assert {1, 2} <= set(np.unique(out))
    np.testing.assert_array_equal(out, expected)


def _oblique(degrees: float, spacing: tuple[float, float, float], origin: tuple[float, float, float]) -> np.ndarray:
    """Affine of a grid of ``spacing`` (mm) rotated ``degrees`` about S, first voxel at ``origin``."""
    angle = np.deg2rad(degrees)
    affine = np.eye(4)
    rotation = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    affine[:3, :3] = np.array(rotation) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def _translation(x: float, y: float, z: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = [x, y, z]
    return m


def test_resample_onto_samples_what_monai_resample_to_match_samples():
    """Slab by slab, the same points and trilinear interpolation as MONAI's
    ResampleToMatch (zeros outside), between oblique grids of other spacings."""
    from monai.data import MetaTensor
    from monai.transforms import ResampleToMatch

    rng = np.random.default_rng(5)
    values = torch.as_tensor(rng.uniform(0, 1, (1, 40, 36, 24)), dtype=torch.float32)
    source = np.diag([-0.9, -0.9, 2.0, 1.0])
    source[:3, 3] = [18.0, 16.0, -20.0]
    target = _oblique(7, (1.7, 1.7, 2.5), (-20.0, -18.0, -22.0))
    grid = Grid((26, 24, 20), target)
    ours = resample_onto(values, source, grid)
    monai = ResampleToMatch(mode="bilinear", padding_mode="zeros")(
        MetaTensor(values, affine=torch.as_tensor(source)),
        img_dst=MetaTensor(torch.zeros((1, *grid.shape)), affine=torch.as_tensor(target)),
    )
    assert ours.shape == (1, *grid.shape)
    assert (ours == 0).any() and (ours > 0).any()  # partly outside the source
    np.testing.assert_allclose(ours.numpy(), monai.as_tensor().numpy(), atol=1e-5)
