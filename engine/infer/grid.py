"""Resampling between an input's grid and a model's grid (MONAI transforms).

The model grid is the input reoriented to ``axcodes`` (RAS) and resampled to the
model's spacing in mm. Intensities are resampled linearly, label maps with nearest
neighbour, and structure probabilities linearly (then thresholded), so integer labels
are never interpolated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Orientation, ResampleToMatch, ScaleIntensityRange, Spacing
from monai.transforms.lazy.functional import apply_pending
from scipy import ndimage

from engine.volume import LabelMap, Volume


def _meta(array: np.ndarray, affine: np.ndarray) -> MetaTensor:
    return MetaTensor(
        torch.as_tensor(array)[None],
        affine=torch.as_tensor(affine, dtype=torch.float64),
    )


def image_to_model_grid(
    volume: Volume,
    spacing_mm: Sequence[float],
    window_hu: Sequence[float],
    axcodes: str = "RAS",
) -> MetaTensor:
    """CT volume -> normalised image on the model grid.

    Returns a MetaTensor of shape (1, X, Y, Z), float32, HU clipped to ``window_hu`` and
    scaled to [0, 1], whose ``affine`` maps model voxels to RAS mm.

    Orientation and spacing are one resampling (MONAI's lazy transforms, applied
    together): the same values as reorienting first, without a reoriented copy of the
    input. A Fortran-order volume (as ``engine.io`` assembles DICOM) goes in as its
    (K, J, I) view, which is C-contiguous as the resampling needs it: no transposing
    copy either.
    """
    array = np.asarray(volume.array, dtype=np.float32)
    affine = np.asarray(volume.affine, dtype=np.float64)
    if array.flags.f_contiguous and not array.flags.c_contiguous:
        array, affine = array.T, affine[:, [2, 1, 0, 3]]
    img = _meta(array, affine)
    img = Orientation(axcodes=axcodes, lazy=True)(img)
    img = Spacing(pixdim=tuple(spacing_mm), mode="bilinear", padding_mode="border", lazy=True)(img)
    img, _ = apply_pending(img, overrides={"mode": "bilinear", "padding_mode": "border"})
    lo, hi = window_hu
    return ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)(img)


def labels_to_model_grid(labels: LabelMap, spacing_mm: Sequence[float], axcodes: str = "RAS") -> MetaTensor:
    """Label map -> (1, X, Y, Z) label MetaTensor on the model grid (nearest neighbour)."""
    lab = _meta(labels.array.astype(np.int16), labels.affine)
    lab = Orientation(axcodes=axcodes)(lab)
    return Spacing(pixdim=tuple(spacing_mm), mode="nearest")(lab)


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """Box of a bool array's True voxels grown by ``margin``; None when there are none."""
    found = ndimage.find_objects(mask.view(np.uint8))
    if not found:
        return None
    return tuple(
        slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(found[0], mask.shape, strict=True)
    )


def _shifted(affine: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """The affine of the sub-grid starting at ``box``'s first voxel."""
    shift = np.eye(4)
    shift[:3, 3] = [s.start for s in box]
    return np.asarray(affine, dtype=np.float64) @ shift


def _within(inner: tuple[slice, ...], outer: tuple[slice, ...]) -> tuple[slice, ...]:
    """``inner`` as indices into an array cropped to ``outer`` (which contains it)."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer, strict=True))


def _input_box(model_box: tuple[slice, ...], model_affine: np.ndarray, reference: Volume) -> tuple[slice, ...] | None:
    """The reference voxels whose centres fall within ``model_box`` (model voxels), as a
    box of the reference grid; None when it misses the grid."""
    ends = [(b.start, b.stop - 1) for b in model_box]
    corners = np.array(
        [[ends[a][bit] for a, bit in enumerate(bits)] for bits in np.ndindex(2, 2, 2)],
        dtype=np.float64,
    )
    to_input = np.linalg.inv(reference.affine) @ model_affine
    ijk = corners @ to_input[:3, :3].T + to_input[:3, 3]
    lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, reference.array.shape)
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


@dataclass(frozen=True)
class StructureOnGrid:
    """One structure's probability resampled onto a reference grid, inside ``box`` (slices
    of the reference's (I, J, K) grid); zero outside it."""

    box: tuple[slice, ...]
    values: np.ndarray  # float32, the box's shape

    def mask(self, shape: Sequence[int], threshold: float) -> np.ndarray:
        """(I, J, K) bool of ``shape``: the probability above ``threshold``."""
        out = np.zeros(tuple(shape), dtype=bool)
        out[self.box] = self.values > threshold
        return out


def structures_to_input_grid(
    probabilities: MetaTensor, reference: Volume, threshold: float
) -> list[StructureOnGrid | None]:
    """Probabilities (C, X, Y, Z) on the model grid -> each channel on ``reference``'s grid.

    Returns one ``StructureOnGrid`` per channel (None where no model voxel is above
    ``threshold`` or its box misses the reference grid), resampled linearly (zero outside
    the model's field of view). Each structure keeps its own voxels: where structures
    overlap (a PTV over an organ) each holds them, as separate ROIs of a structure set may.

    Each channel is resampled only inside the box of its model voxels above
    ``threshold``, grown by the reach of linear interpolation and mapped onto the
    reference grid: no voxel outside it can exceed ``threshold``. Memory and time follow
    the structures' size, not the reference grid's: a float32 box per structure.
    """
    model_affine = np.asarray(probabilities.affine, dtype=np.float64)
    prob = probabilities.as_tensor()
    structures: list[StructureOnGrid | None] = []
    for c in range(prob.shape[0]):
        above = prob[c].numpy() > threshold
        # Linear interpolation exceeds the threshold at most one model voxel away from a
        # voxel above it; the source keeps two, so that every value inside the output
        # box is interpolated from the same neighbours as on the whole grid.
        reach = _box(above, 1)
        box = None if reach is None else _input_box(reach, model_affine, reference)
        source_box = _box(above, 2)
        if box is None or source_box is None:
            structures.append(None)
            continue
        source = MetaTensor(
            prob[c : c + 1][(slice(None), *source_box)],
            affine=torch.as_tensor(_shifted(model_affine, source_box)),
        )
        template = MetaTensor(
            torch.zeros((1, *(s.stop - s.start for s in box)), dtype=torch.float32),
            affine=torch.as_tensor(_shifted(reference.affine, box)),
        )
        values = (
            ResampleToMatch(mode="bilinear", padding_mode="zeros")(source, img_dst=template)
            .as_tensor()[0]
            .float()
            .numpy()
        )
        structures.append(StructureOnGrid(box, values))
    return structures


def labels_from_structures(
    structures: Sequence[StructureOnGrid | None], reference: Volume, label_values: Sequence[int], threshold: float
) -> LabelMap:
    """Structures on ``reference``'s grid (``structures_to_input_grid``) -> one label map.

    Returns a uint8 ``LabelMap`` of ``reference``'s shape (I, J, K) and affine (Fortran
    order, as NIfTI stores it). A voxel gets ``label_values[c]`` of the structure with the
    highest probability there when that probability is above ``threshold``; 0 elsewhere.
    Ties go to the first structure, as ``argmax`` gives them.
    """
    labels = np.zeros(reference.array.shape, dtype=np.uint8, order="F")
    done: list[tuple[StructureOnGrid, int]] = []
    for structure, value in zip(structures, label_values, strict=True):
        if structure is None:
            continue
        box = structure.box
        wins = structure.values > threshold
        for other, other_value in done:
            overlap = tuple(
                slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(box, other.box, strict=True)
            )
            if any(s.stop <= s.start for s in overlap):
                continue
            here, there = _within(overlap, box), _within(overlap, other.box)
            # An earlier structure keeps its voxels unless this one is more probable there.
            taken = labels[overlap] == other_value
            wins[here] &= ~taken | (structure.values[here] > other.values[there])
        labels[box][wins] = value
        done.append((structure, value))
    return LabelMap(labels, np.asarray(reference.affine, dtype=np.float64))


def labels_to_input_grid(
    probabilities: MetaTensor,
    reference: Volume,
    label_values: Sequence[int],
    threshold: float,
) -> LabelMap:
    """Probabilities (C, X, Y, Z) on the model grid -> label map on ``reference``'s grid:
    ``labels_from_structures`` of ``structures_to_input_grid``. Memory: one uint8 grid
    plus a float32 box per structure."""
    return labels_from_structures(
        structures_to_input_grid(probabilities, reference, threshold), reference, label_values, threshold
    )
