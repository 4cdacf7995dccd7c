"""Working grid, dense displacement fields (DDF) and warping by them.

Conventions (``docs/registration.md``), for a fixed (daily) and a moving (planning) image:

* The working grid is derived from the FIXED image: RAS axes, the given spacing in mm,
  covering the fixed image's bounding box, each dimension padded (centred) to a multiple
  of 16 so U-Nets can halve it four times. Both images are resampled onto it.
* A DDF on the working grid is (3, X, Y, Z) (or (B, 3, X, Y, Z)) in VOXELS of that grid,
  the ``monai.networks.blocks.Warp`` convention: the warped moving image at voxel x is the
  moving image at x + ddf(x); ``ddf[i]`` runs along spatial axis i.
* ``ddf_mm`` on the fixed image's own grid is (I, J, K, 3) float32 in mm along R, A, S:
  the fixed-voxel world point p corresponds to the moving world point p + u(p).

Sampling is ``torch.nn.functional.grid_sample`` with ``align_corners=True`` on voxel
coordinates, exactly what ``Warp`` does; here the sampled image may lie on another grid
than the output, so a label map is interpolated once, from its own grid, as one-hot
probabilities, and never as integers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from engine.volume import LabelMap

# Fixed-grid voxels processed at once when resampling onto a large fixed grid (memory).
_CHUNK_VOXELS = 1 << 20


@dataclass(frozen=True)
class Grid:
    """A voxel grid: ``shape`` (X, Y, Z) and ``affine`` (4, 4) voxel -> RAS mm."""

    shape: tuple[int, ...]  # (X, Y, Z)
    affine: np.ndarray


def working_grid(fixed: Grid, spacing_mm: tuple[float, float, float], multiple: int = 16) -> Grid:
    """The RAS grid of ``spacing_mm`` covering ``fixed``'s voxel centres, each dimension
    padded to a multiple of ``multiple`` voxels around the same centre.

    Raises:
        ValueError: a spacing that is not a positive number.
    """
    spacing = np.asarray(spacing_mm, dtype=float)
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise ValueError(f"working spacing must be 3 positive mm values, got {spacing_mm}")
    corners = np.array(
        [
            [i, j, k, 1.0]
            for i in (0, fixed.shape[0] - 1)
            for j in (0, fixed.shape[1] - 1)
            for k in (0, fixed.shape[2] - 1)
        ]
    )
    world = (fixed.affine @ corners.T)[:3].T
    lo, hi = world.min(axis=0), world.max(axis=0)
    size = np.floor((hi - lo) / spacing + 1e-6).astype(int) + 1
    size = (np.ceil(size / multiple) * multiple).astype(int)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (lo + hi) / 2.0 - (size - 1) / 2.0 * spacing
    return Grid(tuple(int(n) for n in size), affine)


def sample(
    image: torch.Tensor,
    coords: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Sample ``image`` (C, I, J, K) at voxel coordinates ``coords`` (3, *S) -> (C, *S).

    ``coords[a]`` is the continuous index along image axis a (0 = first voxel centre).
    ``mode``: "bilinear" (trilinear) or "nearest"; ``padding_mode``: "zeros" or "border"
    outside the image. Same arithmetic as ``monai.networks.blocks.Warp``.
    """
    size = image.shape[1:]
    normalised = []
    for axis, n in enumerate(size):
        c = coords[axis].to(torch.float32)
        # A single voxel: inside within half a voxel of it, else beyond the edge.
        normalised.append(c * (2.0 / (n - 1)) - 1.0 if n > 1 else torch.where(c.abs() <= 0.5, 0.0, 3.0))
    grid = torch.stack(normalised[::-1], dim=-1)  # grid_sample wants (k, j, i)
    spatial = coords.shape[1:]
    grid = grid.reshape(1, *([1] * (3 - len(spatial))), *spatial, 3)
    out = F.grid_sample(
        image[None].to(torch.float32),
        grid,
        mode=mode,
        padding_mode=padding_mode,
        align_corners=True,
    )
    return out.reshape(image.shape[0], *spatial)


# A box of a grid's voxels: one slice per axis (I, J, K).
Box = tuple[slice, slice, slice]


def _whole(shape: tuple[int, ...]) -> Box:
    return (slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))


def _voxel_chunks(box: Box):
    """Slabs of ``box`` along its last axis, each a box of at most about
    ``_CHUNK_VOXELS`` voxels."""
    plane = (box[0].stop - box[0].start) * (box[1].stop - box[1].start)
    step = max(1, _CHUNK_VOXELS // max(1, plane))
    for k0 in range(box[2].start, box[2].stop, step):
        yield (box[0], box[1], slice(k0, min(box[2].stop, k0 + step)))


def _affine_coords(matrix: np.ndarray, slab: Box) -> torch.Tensor:
    """``matrix`` (4, 4) applied to the voxel indices of ``slab`` -> (3, *slab's shape)
    float64: one broadcast sum per axis, without building the indices themselves."""
    m = torch.as_tensor(np.asarray(matrix, dtype=np.float64))
    i, j, k = (torch.arange(s.start, s.stop, dtype=torch.float64) for s in slab)
    out = torch.empty((3, len(i), len(j), len(k)), dtype=torch.float64)
    for a in range(3):
        out[a] = m[a, 0] * i[:, None, None] + (m[a, 1] * j[None, :, None] + (m[a, 2] * k + m[a, 3]))
    return out


def _world_bounds(lo: np.ndarray, hi: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RAS bounds (mm) of the voxel-index box [lo, hi] (continuous indices) of a grid of
    ``affine``: the box of its eight corners, which holds the whole parallelepiped."""
    corners = np.array([[(lo, hi)[bit][a] for a, bit in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
    world = corners @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    return world.min(axis=0), world.max(axis=0)


def _fixed_box(world_lo: np.ndarray, world_hi: np.ndarray, fixed: Grid) -> Box | None:
    """The fixed voxels whose centres can lie within the RAS box [world_lo, world_hi]
    (mm), grown by one voxel against rounding; None when it misses the grid."""
    inverse = np.linalg.inv(fixed.affine)
    lo, hi = _world_bounds(world_lo, world_hi, inverse)
    start = np.maximum(np.floor(lo).astype(int) - 1, 0)
    stop = np.minimum(np.ceil(hi).astype(int) + 2, fixed.shape)
    if np.any(stop <= start):
        return None
    return (slice(int(start[0]), int(stop[0])), slice(int(start[1]), int(stop[1])), slice(int(start[2]), int(stop[2])))


def _union(boxes: list[Box]) -> Box | None:
    if not boxes:
        return None
    return tuple(  # type: ignore[return-value]
        slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3)
    )


def _on_fixed(values: torch.Tensor, grid: Grid, fixed: Grid, mode: str, padding_mode: str, box: Box | None = None):
    """Yield (slab, ``values`` (C, X, Y, Z) on ``grid`` sampled at the fixed voxels of
    slab as (C, *slab's shape)), over the slabs of ``box`` (default: the whole grid)."""
    values = values.detach().to("cpu", torch.float32)
    to_grid = np.linalg.inv(grid.affine) @ fixed.affine
    for slab in _voxel_chunks(box or _whole(fixed.shape)):
        yield slab, sample(values, _affine_coords(to_grid, slab), mode, padding_mode)


def resample_onto(values: torch.Tensor, affine: np.ndarray, target: Grid) -> torch.Tensor:
    """``values`` (C, I, J, K) on a grid of ``affine`` (voxel -> RAS mm) sampled
    trilinearly at ``target``'s voxels -> (C, X, Y, Z) float32; 0 outside ``values``.

    The same points and interpolation as MONAI's ``ResampleToMatch`` (bilinear, zeros),
    slab by slab: its memory is one slab's coordinates, not the target grid's (MONAI's
    held about 1.2 GB beside a 512 x 512 x 192 CT).
    """
    out = torch.empty((values.shape[0], *target.shape), dtype=torch.float32)
    source = Grid(tuple(values.shape[1:]), np.asarray(affine, dtype=np.float64))
    for slab, v in _on_fixed(values, source, target, "bilinear", "zeros"):
        out[(slice(None), *slab)] = v
    return out


class FieldOnFixed:
    """The displacement field u (RAS mm) at the fixed grid's voxels, computed slab by slab
    from the working-grid DDF instead of held: (I, J, K, 3) float32 is 600 MB at
    512 x 512 x 200, the working-grid field a few MB.

    ``ddf`` (3, X, Y, Z) in ``grid`` voxels; ``fixed``: the fixed image's grid. The field
    at a fixed voxel is the trilinear interpolation of the working field (border values
    outside the working grid), as ``ddf_mm`` in the module's conventions. Interpolation is
    linear in the values, so the working field is turned into mm once (``linear @ ddf``)
    and then sampled: the same numbers as converting each interpolated vector.
    """

    def __init__(self, ddf: torch.Tensor, grid: Grid, fixed: Grid):
        linear = torch.as_tensor(grid.affine[:3, :3], dtype=torch.float32)
        self._mm = torch.einsum("ab,b...->a...", linear, ddf.detach().to("cpu", torch.float32)).contiguous()
        self._grid, self.fixed = grid, fixed
        self.shape = (*fixed.shape, 3)

    def __getitem__(self, slab: Box) -> np.ndarray:
        """u at the fixed voxels of ``slab`` -> (*slab's shape, 3) float32, mm."""
        out = np.empty((*(s.stop - s.start for s in slab), 3), dtype=np.float32, order="F")
        offset = [s.start for s in slab]
        for part, values in _on_fixed(self._mm, self._grid, self.fixed, "bilinear", "border", slab):
            local = tuple(slice(p.start - o, p.stop - o) for p, o in zip(part, offset, strict=True))
            out[local] = values.permute(1, 2, 3, 0).numpy()
        return out

    def slabs(self):
        """u slab after slab along K -> (3, I, J, n) float32 arrays, mm, components along
        R, A, S: what ``engine.io.nifti.write_displacement_field`` writes."""
        for _, values in _on_fixed(self._mm, self._grid, self.fixed, "bilinear", "border"):
            yield values.numpy()

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Least and greatest u along R, A, S (mm, (3,) each) over the whole fixed grid, or
        a little wider: an interpolated value lies between the working values around it."""
        flat = self._mm.reshape(3, -1)
        return flat.amin(dim=1).double().numpy(), flat.amax(dim=1).double().numpy()

    def to_array(self) -> np.ndarray:
        """The whole field (I, J, K, 3) float32, mm: for small grids and tests."""
        return self[_whole(self.fixed.shape)]


def argmax_on_fixed(probabilities: torch.Tensor, grid: Grid, fixed: Grid) -> np.ndarray:
    """Channel of highest probability at each fixed voxel, from working-grid
    probabilities (C, X, Y, Z) (channel 0 the background, the channels summing to 1)
    interpolated trilinearly -> (I, J, K) uint8 (uint16 for more than 256 channels, as
    ``np.min_scalar_type`` picks); channel 0 outside the working grid.

    Only the fixed voxels that a foreground channel can win are sampled: an interpolated
    value is a weighted mean of the eight surrounding working voxels, so a channel that
    reaches the largest of C values summing to 1, hence at least 1/C, is at least 1/C at
    one of them. Elsewhere the background wins, as on the whole grid.
    """
    dtype = np.min_scalar_type(max(probabilities.shape[0] - 1, 0))
    out = np.zeros(fixed.shape, dtype=dtype)
    if probabilities.shape[0] < 2:
        return out
    # 1e-4 below 1/C: the channels' float32 sum is 1 only to rounding.
    can_win = (probabilities[1:].amax(dim=0) >= (1.0 - 1e-4) / probabilities.shape[0]).numpy()
    found = ndimage.find_objects(can_win.view(np.uint8))
    if not found:
        return out
    lo = np.array([s.start for s in found[0]], dtype=float) - 1.0
    hi = np.array([s.stop - 1 for s in found[0]], dtype=float) + 1.0
    box = _fixed_box(*_world_bounds(lo, hi, grid.affine), fixed)
    if box is None:
        return out
    for slab, p in _on_fixed(probabilities, grid, fixed, "bilinear", "zeros", box):
        out[slab] = p.argmax(dim=0).numpy()
    return out


def ddf_mm_to_voxels(ddf_mm: np.ndarray, affine: np.ndarray) -> torch.Tensor:
    """``ddf_mm`` (I, J, K, 3) RAS mm on a grid of ``affine`` -> (3, I, J, K) in that
    grid's voxels (the inverse of the linear part applied to each vector)."""
    inverse = torch.as_tensor(np.linalg.inv(affine[:3, :3]), dtype=torch.float32)
    return torch.einsum("ab,...b->a...", inverse, torch.as_tensor(ddf_mm).float())


def moving_coords(ddf_mm: np.ndarray | FieldOnFixed, fixed: Grid, moving_affine: np.ndarray, slab: Box) -> torch.Tensor:
    """Voxel coordinates (3, *slab's shape) in the moving grid of the points p + u(p)
    for the fixed voxels p of ``slab`` (``ddf_mm``: (I, J, K, 3) mm, an array or a
    ``FieldOnFixed``)."""
    world = _affine_coords(fixed.affine, slab) + torch.as_tensor(ddf_mm[slab]).permute(3, 0, 1, 2)
    to_moving = torch.as_tensor(np.linalg.inv(moving_affine), dtype=torch.float64)
    return torch.einsum("ab,b...->a...", to_moving[:3, :3], world) + to_moving[:3, 3].reshape(3, 1, 1, 1)


def warp_image(
    moving: np.ndarray,
    moving_affine: np.ndarray,
    fixed: Grid,
    ddf_mm: np.ndarray,
    outside: float = 0.0,
) -> np.ndarray:
    """The moving image (I', J', K') resampled onto ``fixed`` through ``ddf_mm``
    (trilinear); ``outside`` fills points beyond the moving image. Returns float32."""
    shifted = torch.as_tensor(moving, dtype=torch.float32)[None] - outside
    out = np.empty(fixed.shape, dtype=np.float32)
    for slab in _voxel_chunks(_whole(fixed.shape)):
        coords = moving_coords(ddf_mm, fixed, moving_affine, slab)
        out[slab] = (sample(shifted, coords)[0] + outside).numpy()
    return out


# A fixed voxel samples a structure's crop when it lands within this many moving voxels
# of it (see warp_labels); beyond, it would sample zero padding alone, exactly 0.
_REACH = 1.01


def warp_labels(labels: LabelMap, values: list[int], fixed: Grid, ddf_mm: np.ndarray | FieldOnFixed) -> np.ndarray:
    """Warp a label map onto ``fixed`` through ``ddf_mm`` (I, J, K, 3), an array or a
    ``FieldOnFixed``, as one-hot probabilities.

    Each label value in ``values`` is interpolated as its own 0/1 channel (trilinear,
    from the label map's own grid), background being 1 minus their sum; each fixed voxel
    takes the most probable of background and the labels (argmax; a tie stays
    background). Labels are never interpolated as integers, so no value appears that
    was not in ``values``. Returns an array of ``labels.array.dtype`` (I, J, K).

    A structure is a small part of a 512 x 512 grid, so only the fixed voxels p whose
    p + u(p) can reach a structure's crop are visited: those within the crop's RAS box
    moved back by the field's least and greatest displacement along each axis.
    """
    crops, boxes = [], []
    if isinstance(ddf_mm, FieldOnFixed):
        u_lo, u_hi = ddf_mm.bounds()
    else:
        u_lo, u_hi = ddf_mm.min(axis=(0, 1, 2)).astype(float), ddf_mm.max(axis=(0, 1, 2)).astype(float)
    for value in values:
        box, inside = labels.mask_in_box(value)
        if not inside.any():
            continue
        # The structure's bounding box only (+1 voxel of zeros): far less to sample.
        lo = np.maximum([b.start - 1 for b in box], 0)
        hi = np.minimum([b.stop + 1 for b in box], labels.array.shape)
        crop = labels.array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] == value
        shift = torch.as_tensor(lo, dtype=torch.float64).reshape(3, 1, 1, 1)
        size = torch.as_tensor(crop.shape, dtype=torch.float64).reshape(3, 1, 1, 1)
        crops.append((value, torch.as_tensor(crop)[None].float(), shift, size))
        world_lo, world_hi = _world_bounds(lo - _REACH, hi + _REACH, labels.affine)
        fixed_box = _fixed_box(world_lo - u_hi, world_hi - u_lo, fixed)
        if fixed_box is not None:
            boxes.append(fixed_box)
    result = np.zeros(fixed.shape, dtype=labels.array.dtype)
    region = _union(boxes)
    if region is None:
        return result
    for slab in _voxel_chunks(region):
        coords = moving_coords(ddf_mm, fixed, labels.affine, slab)
        best_p = np.zeros(coords.shape[1:], dtype=np.float32)
        total = np.zeros_like(best_p)
        best = np.zeros(best_p.shape, dtype=labels.array.dtype)
        for value, crop, shift, size in crops:
            local = coords - shift
            # Only the fixed voxels that land within a voxel of the crop are sampled: the
            # others sample zero padding alone, exactly 0 (the 0.01 voxel is far above
            # the rounding of grid_sample's coordinates).
            near_t = ((local > -_REACH) & (local < size - 1 + _REACH)).all(dim=0)
            near = near_t.numpy()
            if not near.any():
                continue
            p = sample(crop, local[:, near_t])[0].numpy()
            total[near] += p
            here_p, here = best_p[near], best[near]
            better = p > here_p
            here_p[better], here[better] = p[better], value
            best_p[near], best[near] = here_p, here
        best[best_p <= 1.0 - total] = 0
        result[slab] = best
    return result


def jacobian_determinant(ddf: torch.Tensor) -> torch.Tensor:
    """det(I + grad ddf) of a DDF (3, X, Y, Z) in voxels of its grid -> (X, Y, Z).

    Central differences inside, one-sided at the edges (``torch.gradient``). The
    determinant is the local volume change of x -> x + ddf(x); <= 0 means the mapping
    folds there. It does not depend on the grid's spacing or orientation, so it is the
    same as that of the field in mm.
    """
    ddf = ddf.detach().to("cpu", torch.float32)
    g = [torch.gradient(ddf[c], dim=(0, 1, 2)) for c in range(3)]
    j = [[g[c][a] + (1.0 if a == c else 0.0) for a in range(3)] for c in range(3)]
    det = (
        j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
        - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
        + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0])
    )
    return det


def folding_percent(ddf: torch.Tensor) -> float:
    """% of voxels of a DDF (3, X, Y, Z) in voxels whose ``jacobian_determinant`` is
    <= 0 (folding)."""
    return float((jacobian_determinant(ddf) <= 0).float().mean() * 100)


@dataclass(frozen=True)
class Folding:
    """Where a field folds, counted on the fixed grid: ``percent`` of all fixed voxels and
    ``inside`` {label value: percent of that label's voxels} whose (nearest working voxel's)
    Jacobian determinant is <= 0, and the ``minimum`` determinant over the fixed grid."""

    percent: float
    minimum: float
    inside: dict[int, float]


def _percent(count: int, total: int) -> float:
    return round(100.0 * count / total, 3) if total else 0.0


def folding_on_fixed(det: torch.Tensor, grid: Grid, fixed: Grid, labels: np.ndarray, values: list[int]) -> Folding:
    """``Folding`` of the working-grid Jacobian determinant (X, Y, Z) at the fixed grid's
    voxels (nearest working voxel), inside each of ``values`` of the fixed-grid label
    map ``labels`` (I, J, K), slab by slab (no fixed-grid array of determinants)."""
    folded = 0
    minimum = math.inf
    counts = {v: [0, 0] for v in values}  # value -> [folded voxels, voxels]
    for slab, d in _on_fixed(det[None], grid, fixed, "nearest", "border"):
        bad = (d[0] <= 0).numpy()
        folded += int(bad.sum())
        minimum = min(minimum, float(d.min()))
        here = labels[slab]
        for value in values:
            mask = here == value
            counts[value][0] += int(bad[mask].sum())
            counts[value][1] += int(mask.sum())
    total = int(np.prod(fixed.shape))
    return Folding(_percent(folded, total), minimum, {v: _percent(*counts[v]) for v in values})
