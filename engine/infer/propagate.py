"""Contour propagation: the planning contours carried onto the daily scan.

``propagate(fixed, moving, moving_contours, structures, model)`` registers the planning
(moving) scan to the daily (fixed) scan, warps the planning contours through the dense
displacement field (as one-hot probabilities, ``engine.infer.displacement``), checks the
field for folding (Jacobian determinant <= 0) and, for a joint model that also segments
the daily scan, compares each propagated structure with the direct segmentation (Dice,
mean surface distance, HD95 in mm; ``engine.metrics``).

Methods (``PROPAGATION_MODELS()``):

* classical, no weights: ``rigid``, ``affine`` and ``elastix-bspline`` (affine then
  cubic B-spline), run by the elastix binary with the parameter files in
  ``engine/infer/elastix/`` (``docs/registration.md``);
* joint registration + segmentation networks shipped as ``engine/weights/NAME.pt`` with
  a card ``NAME.json`` whose ``"kind"`` is ``"joint"``, built by
  ``engine.models.joint.build_joint_model(config)``; ``forward(fixed, moving)`` takes
  (B, 1, X, Y, Z) images in [0, 1] on the working grid and returns ``.ddf`` (B, 3, X, Y,
  Z) in working-grid voxels (MONAI ``Warp`` convention) and ``.seg_logits`` (B, C + 1,
  X, Y, Z) of the fixed image (channel 0 background, channel c the card's structure
  c - 1) or None. The network sees the moving image after the classical pre-alignment
  that the card's ``"prealign"`` names (``"affine"`` when absent; ``"rigid"``, or
  ``"none"``), and the result is the composition of the two fields (``compose_ddf``).

A structure gets a warning when its propagated contour is empty, when the deformation
folds inside it, or when it disagrees with the direct segmentation: Dice below
``MIN_DICE_VS_DIRECT`` or mean surface distance above ``MAX_MSD_MM_VS_DIRECT``. AAPM
TG-132 (Brock et al., Med Phys 44:e43, 2017) suggests, for validating propagated
contours, a mean distance to agreement within about a voxel (2-3 mm) and Dice within
the inter-observer range (about 0.8-0.9); we flag a little more loosely (Dice 0.7, 3 mm)
because the direct segmentation is itself a model with errors of its own.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.blocks import Warp
from scipy.ndimage import binary_dilation

from engine.errors import ModelError
from engine.infer import elastix
from engine.infer.body import BODY_HU
from engine.infer.displacement import (
    FieldOnFixed,
    Grid,
    argmax_on_fixed,
    folding_on_fixed,
    jacobian_determinant,
    resample_onto,
    warp_labels,
    working_grid,
)
from engine.infer.memory import return_large_blocks_to_os
from engine.infer.methods import (
    CLASSICAL_METHODS,
    METHOD_PARAMETERS,
    propagation_models,
)
from engine.infer.segment import write_dicom_outputs
from engine.io.contour_input import read_contours
from engine.io.nifti import write_displacement_field
from engine.io.reader import read_input
from engine.metrics import surface_metrics
from engine.models.registry import (
    WEIGHTS_DIR,
    UnknownModelError,
    default_device,
    sha256_of,
)
from engine.results import ResultFolder, StructureEntry
from engine.structure import Structure
from engine.volume import LabelMap, Volume

Progress = Callable[[str, int], None]
_warp_border = Warp(mode="bilinear", padding_mode="border")
_warp_zeros = Warp(mode="bilinear", padding_mode="zeros")

# Working grid of the classical methods: fine enough for a 20 mm B-spline grid and
# sub-voxel rigid accuracy, coarse enough for a few seconds per elastix level on 2 cores.
CLASSICAL_SPACING_MM = (2.5, 2.5, 2.5)
CLASSICAL_WINDOW_HU = (-1000.0, 1500.0)
# elastix samples its metric in the patient: the fixed image above BODY_HU, dilated by
# MASK_MARGIN_VOXELS working voxels (10 mm) so the body outline is inside.
MASK_MARGIN_VOXELS = 4
# A joint model registers what is left after this classical stage (its card's
# "prealign": "rigid", "affine" or "none"): the networks were trained on pairs already
# centred on the anatomy, and a CPU-sized network cannot undo centimetres of set-up.
DEFAULT_JOINT_PREALIGN = "affine"
JOINT_PREALIGN_CHOICES = ("none", "rigid", "affine")
# The joint networks were trained on crops of 48 x 48 x 32 working voxels around the
# organs and scored on 64 x 64 x 48 (256 x 256 x 192 mm at 4 mm): they see that box
# around the planning contours, not a whole scan of air, couch and shoulders they never
# saw in training. Their field fades out over TAPER_VOXELS at the box's inner faces.
JOINT_REGION_VOXELS = (64, 64, 48)
TAPER_VOXELS = 4
# The five-level networks need at least 2 voxels along each axis at 1/16 resolution.
MIN_NETWORK_VOXELS = 32
MIN_DICE_VS_DIRECT = 0.7
MAX_MSD_MM_VS_DIRECT = 3.0
STAGE_END = {
    "ingest": 10,
    "preprocess": 20,
    "registration": 70,
    "warp": 85,
    "compare": 90,
    "export": 100,
}


@dataclass(frozen=True)
class PropagationMethod:
    """A registration method ready to run: classical (``network`` None) or joint."""

    name: str
    kind: str  # "classical" or "joint"
    spacing_mm: tuple[float, float, float]
    window_hu: tuple[float, float]
    sha256: str  # weights, or the elastix parameter files
    config: dict
    network: torch.nn.Module | None = None
    device: torch.device | None = None  # where the network runs


@dataclass(frozen=True)
class PropagationResult:
    """What ``propagate`` returns; every array is on the fixed image's grid.

    ``field``: the displacement field on the fixed grid, (I, J, K, 3) float32 in mm along
    R, A, S (fixed point p <-> moving p + u(p)), computed slab by slab from the working
    grid's field when read (``FieldOnFixed``), never held whole.
    ``labels``: the propagated contours; ``direct_labels``: the model's segmentation of
    the fixed image with the same label values (None for classical methods).
    ``structures``: the propagated structures, as given; ``measures``: one dict per
    structure, the entries of ``report.json``'s ``structures`` (name, label, color, type,
    volume_ml, the agreement with the direct segmentation, folding_percent_inside,
    warning). ``timings``: seconds per stage. ``folding``: ``folding_percent`` (voxels
    with Jacobian determinant <= 0), ``min_jacobian`` and ``inside`` {name: percent}.
    """

    field: FieldOnFixed
    labels: LabelMap
    direct_labels: LabelMap | None
    structures: list[Structure]
    measures: list[dict]
    timings: dict[str, float]
    folding: dict


def PROPAGATION_MODELS(weights_dir: Path | None = None) -> list[str]:
    """Names ``propagate`` accepts: the classical methods, then the shipped joint models."""
    return propagation_models(weights_dir or WEIGHTS_DIR)


def _spacing(value: Any) -> tuple[float, float, float]:
    values = [float(value)] * 3 if isinstance(value, int | float) else [float(v) for v in value]
    if len(values) != 3:
        raise ValueError(f"spacing_mm must be a number or three numbers, got {value}")
    return (values[0], values[1], values[2])


def load_method(name: str, weights_dir: Path | None = None) -> PropagationMethod:
    """The propagation method called ``name``.

    Raises:
        UnknownModelError: neither a classical method nor a shipped joint model.
        ModelError: a joint model's card names an unknown ``prealign``.
    """
    if name in CLASSICAL_METHODS:
        return PropagationMethod(
            name,
            "classical",
            CLASSICAL_SPACING_MM,
            CLASSICAL_WINDOW_HU,
            elastix.parameters_sha256(name),
            {"parameters": list(METHOD_PARAMETERS[name])},
        )
    from engine.models.joint import load_joint_model

    weights_dir = weights_dir or WEIGHTS_DIR
    if name not in PROPAGATION_MODELS(weights_dir):
        raise UnknownModelError(
            f"{name!r} is not a propagation model; available: " + ", ".join(PROPAGATION_MODELS(weights_dir))
        )
    network, config = load_joint_model(name, weights_dir)
    prealign = config.get("prealign", DEFAULT_JOINT_PREALIGN)
    if prealign not in JOINT_PREALIGN_CHOICES:
        raise ModelError(
            f"joint model {name!r}: prealign must be one of {', '.join(JOINT_PREALIGN_CHOICES)}, got {prealign!r}"
        )
    weights = weights_dir / f"{name}.pt"
    device = default_device()
    return PropagationMethod(
        name,
        "joint",
        _spacing(config["spacing_mm"]),
        (float(config["window_hu"][0]), float(config["window_hu"][1])),
        sha256_of(weights),
        config,
        network.to(device).eval(),
        device,
    )


def to_working_grid(volume: Volume, grid: Grid, window_hu) -> torch.Tensor:
    """``volume`` windowed to [0, 1] (HU ``window_hu``) and resampled onto ``grid``
    (trilinear, ``engine.infer.displacement.resample_onto``) -> (X, Y, Z) float32; 0 (the
    window's floor, air for CT) outside the volume."""
    lo, hi = window_hu
    # One float32 copy of the scan (200 MB for 512 x 512 x 200), windowed in place with
    # MONAI ScaleIntensityRange's arithmetic ((HU - lo) / (hi - lo), clipped to [0, 1]).
    array = torch.tensor(volume.array, dtype=torch.float32)
    array.sub_(lo).div_(hi - lo).clamp_(0.0, 1.0)
    return resample_onto(array[None], volume.affine, grid)[0]


def _elastix(name: str, fixed: torch.Tensor, moving: torch.Tensor, grid: Grid, window_hu) -> torch.Tensor:
    """elastix method ``name`` on working-grid images, sampling the metric in the body
    of the fixed image -> DDF (3, X, Y, Z) in working-grid voxels."""
    lo, hi = window_hu
    body = fixed.numpy() >= (BODY_HU - lo) / (hi - lo)
    mask = binary_dilation(body, iterations=MASK_MARGIN_VOXELS)
    return elastix.register(fixed.numpy(), moving.numpy(), grid, name, mask)


def compose_ddf(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """The DDF of applying ``inner`` then ``outer``: u(x) = inner(x) + outer(x + inner(x)).

    ``inner``, ``outer``: (3, X, Y, Z) in voxels of one grid, MONAI ``Warp`` convention.
    If image a(y) = m(y + outer(y)) and f(x) = a(x + inner(x)), then f(x) = m(x + u(x)).
    ``outer`` is sampled trilinearly, with its edge values beyond the grid.
    """
    moved = _warp_border(outer[None].float(), inner[None].float())[0]
    return inner + moved


def network_region(shape: tuple[int, ...], centre: np.ndarray) -> tuple[slice, slice, slice]:
    """The box of the working grid a joint network sees: ``JOINT_REGION_VOXELS`` (or the
    whole axis where the grid is smaller) around ``centre`` (voxels), kept inside."""
    box = []
    for n, size, c in zip(shape, JOINT_REGION_VOXELS, centre, strict=True):
        size = min(size, n)
        start = int(np.clip(round(float(c)) - size // 2, 0, n - size))
        box.append(slice(start, start + size))
    return (box[0], box[1], box[2])


def taper(shape: tuple[int, ...], region: tuple[slice, ...]) -> torch.Tensor:
    """Weights (X', Y', Z') of ``region``: 1 inside, falling to 0 along a half cosine over
    the ``TAPER_VOXELS`` next to each face of the box that is inside the grid (a face on
    the grid's edge keeps 1), so a field that is zero outside the box stays continuous."""
    weights = torch.ones(tuple(r.stop - r.start for r in region))
    for axis, (r, n) in enumerate(zip(region, shape, strict=True)):
        size = r.stop - r.start
        ramp = torch.ones(size)
        k = torch.arange(TAPER_VOXELS, dtype=torch.float32)
        rise = 0.5 - 0.5 * torch.cos(torch.pi * (k + 1) / (TAPER_VOXELS + 1))
        if r.start > 0:
            ramp[:TAPER_VOXELS] = rise
        if r.stop < n:
            ramp[size - TAPER_VOXELS :] = rise.flip(0)
        view = [1, 1, 1]
        view[axis] = size
        weights = weights * ramp.view(view)
    return weights


def _register(
    method: PropagationMethod,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    grid: Grid,
    centre: np.ndarray,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """DDF (3, X, Y, Z) in working-grid voxels, and seg logits (C + 1, X, Y, Z) or None.

    A joint model runs on the moving image after the classical pre-alignment its card
    names (``prealign``), on the box around ``centre`` (working voxels: the planning
    contours) that ``network_region`` gives: the crops it was trained and scored on. Its
    field is tapered to zero at the box's inner faces (``taper``) and composed with the
    pre-alignment's; outside the box the pre-alignment alone holds, and the direct
    segmentation is background."""
    if method.network is None:
        return _elastix(method.name, fixed, moving, grid, method.window_hu), None
    prealign = method.config.get("prealign", DEFAULT_JOINT_PREALIGN)
    pre = None
    if prealign != "none":
        pre = _elastix(prealign, fixed, moving, grid, method.window_hu)
        moving = _warp_zeros(moving[None, None], pre[None].float())[0, 0]
        # The contours sit at ``centre`` in the planning scan, i.e. near x with
        # x + pre(x) = centre in the daily scan: one fixed-point step finds the box.
        near = tuple(int(np.clip(round(float(c)), 0, n - 1)) for c, n in zip(centre, grid.shape, strict=True))
        centre = centre - pre[(slice(None), *near)].numpy()
    region = network_region(grid.shape, centre)
    box = tuple(r.stop - r.start for r in region)
    # A small scan gives a box too small for the network's coarsest level (1/16): pad
    # it with air at the far side, and keep only the box of the result.
    padded = tuple(max(n, MIN_NETWORK_VOXELS) for n in box)
    pad = [p for n, m in zip(box[::-1], padded[::-1], strict=True) for p in (0, m - n)]
    inside = (slice(None), *(slice(0, n) for n in box))
    with torch.no_grad():
        out = method.network(
            F.pad(fixed[region], pad)[None, None].to(method.device),
            F.pad(moving[region], pad)[None, None].to(method.device),
        )
    if tuple(out.ddf.shape) != (1, 3, *padded):
        raise ValueError(
            f"model {method.name!r} returned a DDF of shape {tuple(out.ddf.shape)}, expected {(1, 3, *padded)}"
        )
    ddf = torch.zeros((3, *grid.shape))
    weights = taper(grid.shape, region)
    ddf[(slice(None), *region)] = out.ddf[0].float().cpu()[inside] * weights
    logits = None
    if out.seg_logits is not None:
        channels = out.seg_logits.shape[1]
        logits = torch.zeros((channels, *grid.shape))
        logits[0] = 1.0  # background outside the box
        logits[(slice(None), *region)] = out.seg_logits[0].float().cpu()[inside]
    return (ddf if pre is None else compose_ddf(pre, ddf)), logits


def _contour_centre(contours: LabelMap, grid: Grid) -> np.ndarray:
    """Centroid of the contoured voxels (or of the label map's grid when it is empty),
    as working-grid voxel coordinates (3,)."""
    where = np.argwhere(contours.array > 0)
    index = where.mean(axis=0) if where.size else (np.array(contours.array.shape) - 1) / 2
    world = np.asarray(contours.affine, dtype=float) @ np.append(index, 1.0)
    return (np.linalg.inv(grid.affine) @ world)[:3]


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _direct_labels(
    logits: torch.Tensor,
    method: PropagationMethod,
    structures: Sequence[Structure],
    grid: Grid,
    fixed: Grid,
) -> np.ndarray:
    """The model's segmentation on the fixed grid, with the contours' label values for
    the structures it shares with them by name (case, spaces and underscores ignored);
    its other structures are left out (0)."""
    if logits.shape[0] != len(method.config["structures"]) + 1:
        raise ValueError(
            f"model {method.name!r} returned {logits.shape[0]} segmentation channels; "
            f"its card lists {len(method.config['structures'])} structures (+ background)"
        )
    by_key = {_key(s.name): s.label for s in structures}
    lut = np.zeros(logits.shape[0], dtype=np.int64)
    for c, s in enumerate(method.config["structures"], start=1):
        for name in (s["name"], s.get("source", s["name"])):
            lut[c] = by_key.get(_key(name), lut[c])
    channel = argmax_on_fixed(torch.softmax(logits, dim=0), grid, fixed)
    # In the smallest type of the label values: an int64 grid of a 512 x 512 x 200 CT
    # is 400 MB.
    return lut.astype(np.min_scalar_type(int(lut.max())))[channel]


def _warning(entry: dict) -> str | None:
    reasons = []
    if entry["volume_ml"] == 0:
        reasons.append("the propagated contour is empty")
    if entry["folding_percent_inside"]:
        reasons.append(
            f"the deformation folds inside it ({entry['folding_percent_inside']:.1f} % "
            "of its voxels have Jacobian determinant <= 0)"
        )
    dice, msd = entry["dice_vs_direct"], entry["msd_mm_vs_direct"]
    if dice is not None and dice < MIN_DICE_VS_DIRECT:
        reasons.append(f"it disagrees with the direct segmentation (Dice {dice:.2f}, below {MIN_DICE_VS_DIRECT:.2f})")
    if msd is not None and msd > MAX_MSD_MM_VS_DIRECT:
        reasons.append(
            f"its surface lies {msd:.1f} mm from the direct segmentation on average "
            f"(above {MAX_MSD_MM_VS_DIRECT:.0f} mm)"
        )
    return "; ".join(reasons) or None


def propagate(
    fixed: Volume,
    moving: Volume,
    moving_contours: LabelMap,
    structures: Sequence[Structure],
    model: str | PropagationMethod,
    progress: Progress | None = None,
) -> PropagationResult:
    """Propagate ``moving_contours`` from the moving (planning) to the fixed (daily) scan.

    ``fixed``/``moving``: (I, J, K) HU volumes with RAS affines (any grids);
    ``moving_contours``: label map on any grid in the moving scan's space;
    ``structures``: the structures of ``moving_contours`` to propagate (by label value);
    ``model``: a name from ``PROPAGATION_MODELS()`` or a loaded method.

    Raises:
        UnknownModelError: ``model`` is not a propagation model.
        engine.infer.elastix.ElastixError: a classical method's binary fails.
        ValueError: a joint model returns a DDF or logits of the wrong shape.
    """
    report = progress or (lambda stage, pct: None)
    method = model if isinstance(model, PropagationMethod) else load_method(model)
    timings: dict[str, float] = {}
    t = time.perf_counter()

    def lap(stage: str, next_stage: str) -> None:
        nonlocal t
        now = time.perf_counter()
        timings[stage] = round(now - t, 3)
        t = now
        report(next_stage, STAGE_END[stage])

    report("preprocess", STAGE_END["ingest"])
    fixed_grid = Grid(tuple(fixed.array.shape), np.asarray(fixed.affine, dtype=float))
    grid = working_grid(fixed_grid, method.spacing_mm)
    fixed_w = to_working_grid(fixed, grid, method.window_hu)
    moving_w = to_working_grid(moving, grid, method.window_hu)
    lap("preprocess", "registration")
    ddf, logits = _register(method, fixed_w, moving_w, grid, _contour_centre(moving_contours, grid))
    lap("registration", "warp")
    det = jacobian_determinant(ddf)
    field = FieldOnFixed(ddf, grid, fixed_grid)
    values = [s.label for s in structures]
    labels = LabelMap(warp_labels(moving_contours, values, fixed_grid, field), fixed.affine)
    folds = folding_on_fixed(det, grid, fixed_grid, labels.array, values)
    lap("warp", "compare")
    direct = None
    if logits is not None:
        direct_array = _direct_labels(logits, method, structures, grid, fixed_grid)
        direct = LabelMap(direct_array.astype(labels.array.dtype), fixed.affine)
    entries, inside = [], {}
    ml = labels.voxel_volume_mm3 / 1000.0
    for s in structures:
        mask = labels.array == s.label
        inside[s.name] = folds.inside[s.label]
        entry = {
            "name": s.name,
            "label": s.label,
            "color": list(s.color),
            "type": s.interpreted_type,
            "volume_ml": round(float(mask.sum()) * ml, 3),
            "dice_vs_direct": None,
            "msd_mm_vs_direct": None,
            "hd95_mm_vs_direct": None,
            "volume_ml_direct": None,
            "folding_percent_inside": inside[s.name],
        }
        if direct is not None and (direct.array == s.label).any():
            other = direct.array == s.label
            dice, msd, hd95 = surface_metrics(mask, other, fixed.spacing)
            entry |= {
                "dice_vs_direct": round(dice, 4),
                "msd_mm_vs_direct": msd,
                "hd95_mm_vs_direct": hd95,
                "volume_ml_direct": round(float(other.sum()) * ml, 3),
            }
        entry["warning"] = _warning(entry)
        entries.append(entry)
    folding = {
        "folding_percent": folds.percent,
        "min_jacobian": round(folds.minimum, 4),
        "inside": inside,
    }
    lap("compare", "export")
    return PropagationResult(field, labels, direct, list(structures), entries, timings, folding)


def _write_outputs(result: PropagationResult, fixed: Volume, out: ResultFolder) -> list[StructureEntry]:
    """NIfTI outputs as ``segment`` writes them, plus ``ddf.nii.gz`` and, for a joint
    model, ``direct_labels.nii.gz``; returns the ``structures.json`` entries."""
    write_displacement_field(result.field, fixed.affine, out / out.DDF)
    out.write_image(fixed)
    out.write_labels(result.labels)
    if result.direct_labels is not None:
        out.write_labels(result.direct_labels, out.DIRECT_LABELS)
    return out.write_structures(result.labels, result.structures)


def propagate_files(
    fixed: str | Path,
    moving: str | Path,
    contours: str | Path,
    model: str,
    out_dir: str | Path,
    progress: Progress | None = None,
    fixed_series: str | None = None,
    moving_series: str | None = None,
) -> dict:
    """Propagate the planning contours onto the daily scan; write the results in ``out_dir``.

    ``fixed`` (daily) and ``moving`` (planning): a DICOM folder, a zip of one, or NIfTI
    (``*_series`` picks a DICOM series when an upload holds several). ``contours``: an
    RTSTRUCT drawn on the planning series, a folder with ``labels.nii.gz`` +
    ``structures.json`` as ``segment`` writes it, or a folder of per-ROI NIfTI masks
    (``engine.io.contour_input``).

    Writes ``image.nii.gz`` (the daily scan, int16 HU), ``ddf.nii.gz`` ((I, J, K, 3) mm
    RAS on the daily grid, intent vector), ``labels.nii.gz``, ``structures.json``,
    ``structures/<ROI>.nii.gz``, ``direct_labels.nii.gz`` (joint models), ``rtstruct.dcm``
    with ``rtstruct_check.json`` and ``seg.dcm`` referencing the daily series (for a
    NIfTI daily scan, the scan written as ``ct_dicom/`` + ``ct_dicom.zip``; see
    ``engine.infer.segment.write_dicom_outputs``) and ``report.json``, which is returned:
    {model, kind, sha256, structures: [{name, label, volume_ml, dice_vs_direct,
    msd_mm_vs_direct, hd95_mm_vs_direct, folding_percent_inside, warning, ...}],
    folding_percent, min_jacobian, timings, notes, rtstruct}.

    Raises:
        engine.errors.InputError: an unreadable scan or contours.
        engine.io.rtstruct_import.RTStructImportError: an RTSTRUCT that does not fit the
            planning series.
        UnknownModelError: ``model`` is not a propagation model.
        engine.infer.elastix.ElastixError: elastix is missing or fails.
        engine.io.rtstruct_check.RTStructExportError: the RTSTRUCT written does not
            reproduce the propagated contours (then no ``rtstruct.dcm``).
    """
    return_large_blocks_to_os()
    report = progress or (lambda stage, pct: None)
    out = ResultFolder(out_dir)
    report("ingest", 0)
    t0 = time.perf_counter()
    method = load_method(model)
    fixed_volume, fixed_dicom = read_input(fixed, fixed_series)
    moving_volume, moving_dicom = read_input(moving, moving_series)
    contour_labels, structures, notes = read_contours(contours, moving_dicom)
    ingest_s = round(time.perf_counter() - t0, 3)
    result = propagate(fixed_volume, moving_volume, contour_labels, structures, method, report)
    del moving_volume  # not needed for the outputs: 200 MB at 512 x 512 x 200
    t1 = time.perf_counter()
    out.path.mkdir(parents=True, exist_ok=True)
    _write_outputs(result, fixed_volume, out)
    exports = write_dicom_outputs(
        result.labels,
        fixed_volume,
        fixed_dicom,
        result.structures,
        f"propagate {method.name}",
        method.sha256,
        out,
    )
    timings = {"ingest": ingest_s, **result.timings}
    timings["export"] = round(time.perf_counter() - t1, 3)
    document = {
        "model": method.name,
        "kind": method.kind,
        "sha256": method.sha256,
        "working_spacing_mm": list(method.spacing_mm),
        "prealign": (method.config.get("prealign", DEFAULT_JOINT_PREALIGN) if method.kind == "joint" else None),
        "structures": result.measures,
        "folding_percent": result.folding["folding_percent"],
        "min_jacobian": result.folding["min_jacobian"],
        "timings": timings,
        "notes": notes + exports.notes,
        "rtstruct": out.RTSTRUCT if exports.rtstruct else None,
        "references_daily_series": fixed_dicom is not None,
        "thresholds": {
            "min_dice_vs_direct": MIN_DICE_VS_DIRECT,
            "max_msd_mm_vs_direct": MAX_MSD_MM_VS_DIRECT,
        },
    }
    out.write_json(out.PROPAGATION, document)
    report("export", STAGE_END["export"])
    return document
