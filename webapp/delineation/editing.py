"""Contour edits on a label map, and how much they corrected the model: pure numpy/scipy/skimage.

Every function works on the viewer's label map: uint8, canonical RAS voxel axes (X, Y, Z)
(``viewer.viewer_volume``), and on slices as the slice endpoint shows them
(``viewer.oriented_slice``: rows top to bottom, columns left to right, radiological). A
polygon's points are (row, column) pixel indices of that slice, pixel centres at whole
numbers; a pixel is inside when its centre is (``skimage.draw.polygon2mask``).

A label map holds one label per voxel: where a structure is added over another one, the
added structure takes the voxel, and the other one changes too.

Errors: :class:`EditError`, whose message is meant for the physician.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.draw import polygon2mask

from webapp.delineation.engine_client import Structure
from webapp.delineation.viewer import PLANES, oriented_slice

# A closed stroke of a few hundred points is typical; the self-intersection check is
# quadratic in the number of points (done in blocks of edges).
MAX_POLYGON_POINTS = 2000
_CROSSING_ROWS = 256
PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}


class EditError(ValueError):
    """An edit that cannot be applied; ``message`` says why, for the physician."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def check_slice(shape: tuple[int, int, int], plane: str, index: object) -> int:
    """``index`` as a slice number of ``plane`` in a volume of ``shape`` (X, Y, Z).

    Raises:
        EditError: unknown plane, or an index that is not a whole number in range.
    """
    if plane not in PLANES:
        raise EditError(f"The plane must be one of {', '.join(PLANES)}, not {plane!r}.")
    count = shape[PLANE_AXIS[plane]]
    if isinstance(index, bool) or not isinstance(index, int):
        raise EditError(f"The slice must be given as a whole number (0 to {count - 1}).")
    if not 0 <= index < count:
        raise EditError(f"Slice {index} does not exist: the {plane} slices are numbered 0 to {count - 1}.")
    return index


def _segments_cross(points: np.ndarray) -> bool:
    """Whether two non-adjacent edges of the closed polygon ``points`` (N, 2) cross."""
    a, b = points, np.roll(points, -1, axis=0)
    n = len(points)

    def orient(p, q, r):  # sign of the turn p -> q -> r, for every pair of edges
        pq, pr = q - p, r - p
        return np.sign(pq[..., 0] * pr[..., 1] - pq[..., 1] * pr[..., 0])

    aj, bj = a[None, :], b[None, :]
    j = np.arange(n)[None, :]
    for start in range(0, n, _CROSSING_ROWS):  # edges in blocks: memory grows with N, not N^2
        i = np.arange(start, min(n, start + _CROSSING_ROWS))[:, None]
        ai, bi = a[i[:, 0]][:, None], b[i[:, 0]][:, None]
        crossing = (orient(ai, bi, aj) * orient(ai, bi, bj) < 0) & (orient(aj, bj, ai) * orient(aj, bj, bi) < 0)
        # Adjacent edges share a vertex and always "touch": only pairs at least two apart count.
        apart = (j > i + 1) & ~((i == 0) & (j == n - 1))
        if (crossing & apart).any():
            return True
    return False


def polygon_mask(polygon: object, slice_shape: tuple[int, int]) -> np.ndarray:
    """The pixels of a slice (rows, columns) whose centre lies inside ``polygon``, bool.

    ``polygon``: [[row, column], ...], closed implicitly (the last point joins the first).

    Raises:
        EditError: not a list of number pairs, too many points, fewer than 3 distinct
            points, no area, edges that cross, or no pixel inside.
    """
    try:
        points = np.asarray(polygon, dtype=float)
    except (TypeError, ValueError):
        raise EditError("The polygon must be a list of [row, column] points.") from None
    if points.ndim != 2 or points.shape[1:] != (2,) or not np.isfinite(points).all():
        raise EditError("The polygon must be a list of [row, column] points (numbers).")
    if len(points) > MAX_POLYGON_POINTS:
        raise EditError(f"The polygon has {len(points)} points; at most {MAX_POLYGON_POINTS} are accepted.")
    if len(points) > 1 and np.allclose(points[0], points[-1]):
        points = points[:-1]  # closed explicitly: the same polygon
    distinct = np.unique(points, axis=0)
    area = 0.5 * (points[:, 0] @ np.roll(points[:, 1], -1) - points[:, 1] @ np.roll(points[:, 0], -1))
    no_area = "The outline has no area (fewer than 3 distinct points, or all on one line): draw it again."
    if len(distinct) < 3:
        raise EditError(no_area)
    # Before the area: a figure-of-eight's two loops cancel out in the signed area.
    if len(distinct) < len(points) or _segments_cross(points):
        raise EditError("The outline crosses itself: draw it again without crossing its own path.")
    if abs(area) < 1e-9:
        raise EditError(no_area)
    mask = polygon2mask(slice_shape, points)
    if not mask.any():
        raise EditError("The outline covers no pixel of the slice.")
    return mask


def rle_mask(rle: object, slice_shape: tuple[int, int]) -> np.ndarray:
    """A slice mask (rows, columns), bool, from run lengths over its pixels in row-major order,
    alternating outside and inside, starting outside (a first run of 0 starts inside).

    Raises:
        EditError: not a list of non-negative whole numbers adding up to rows x columns.
    """
    size = slice_shape[0] * slice_shape[1]
    if not isinstance(rle, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in rle):
        raise EditError("The mask must be a list of run lengths (whole numbers, 0 or more).")
    if sum(rle) != size:
        rows, columns = slice_shape
        raise EditError(
            f"The mask's run lengths add up to {sum(rle)} pixels; the slice has {rows} x {columns} = {size}."
        )
    values = np.arange(len(rle)) % 2 == 1
    mask = np.repeat(values, rle).reshape(slice_shape)
    if not mask.any():
        raise EditError("The mask covers no pixel of the slice.")
    return mask


def paint(labels: np.ndarray, plane: str, index: int, label: int, mask: np.ndarray, mode: str) -> None:
    """In place: ``mode`` "add" gives the pixels of ``mask`` to ``label``; "erase" clears
    the pixels of ``label`` inside ``mask``. ``labels``: (X, Y, Z) uint8, ``mask``: the
    displayed slice (rows, columns), bool."""
    view = oriented_slice(labels, plane, index)  # a view: writing to it writes the volume
    if mode == "add":
        view[mask] = label
    else:
        view[mask & (view == label)] = 0


def _check_range(shape: tuple[int, int, int], plane: str, first: object, last: object) -> tuple[int, int]:
    first, last = check_slice(shape, plane, first), check_slice(shape, plane, last)
    if first > last:
        raise EditError(f"The first slice ({first}) comes after the last one ({last}).")
    return first, last


def delete_range(labels: np.ndarray, plane: str, first: object, last: object, label: int) -> None:
    """In place: clear ``label`` on the ``plane`` slices ``first`` to ``last`` (both included).

    Raises:
        EditError: a slice out of range, or ``first`` after ``last``.
    """
    first, last = _check_range(labels.shape, plane, first, last)
    box = [slice(None)] * 3
    box[PLANE_AXIS[plane]] = slice(first, last + 1)
    part = labels[tuple(box)]
    part[part == label] = 0


def _signed_distance(mask: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Distance (mm) of each pixel to the mask's boundary: negative inside, positive outside."""
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing)
    return outside - inside


def interpolate(
    labels: np.ndarray, plane: str, first: object, last: object, label: int, spacing: tuple[float, float]
) -> None:
    """In place: replace ``label`` on the slices strictly between ``first`` and ``last`` by the
    shape interpolated between those two slices, linear in the signed distance to the
    contour (as planning systems interpolate). ``spacing``: (row, column) pixel size in mm
    of the plane's slices.

    Raises:
        EditError: a slice out of range, fewer than one slice between them, or the
            structure missing on ``first`` or ``last``.
    """
    first, last = _check_range(labels.shape, plane, first, last)
    if last - first < 2:
        raise EditError("Interpolation needs at least one slice between the two slices.")
    ends = [oriented_slice(labels, plane, k) == label for k in (first, last)]
    for k, mask in zip((first, last), ends, strict=True):
        if not mask.any():
            raise EditError(f"The structure is not drawn on slice {k}: draw it there first, then interpolate.")
    low, high = (_signed_distance(m, spacing) for m in ends)
    for k in range(first + 1, last):
        t = (k - first) / (last - first)
        view = oriented_slice(labels, plane, k)
        view[view == label] = 0
        view[(1 - t) * low + t * high <= 0] = label


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _boundary(mask: np.ndarray) -> np.ndarray:
    """In-plane boundary pixels of each axial slice of a mask (X, Y, Z)."""
    eroded = ndimage.binary_erosion(mask, structure=np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)[..., None])
    return mask & ~eroded


def added_path_length_mm(reference: np.ndarray, edited: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Added path length (Vaassen et al., Phys Imaging Radiat Oncol 2020), mm: the length of
    the edited contour, on the axial slices, that is not on the reference contour, each
    boundary pixel counting its mean in-plane size. ``reference``, ``edited``: bool (X, Y, Z);
    ``spacing``: (X, Y, Z) in mm."""
    added = _boundary(edited) & ~_boundary(reference)
    return round(float(added.sum()) * (spacing[0] + spacing[1]) / 2, 2)


def measures(
    original: np.ndarray, edited: np.ndarray, structures: Sequence[Structure], spacing: tuple[float, float, float]
) -> dict[str, dict]:
    """Per structure name: ``edited`` (differs from the model's output), ``dice`` and
    ``added_path_length_mm`` against it, ``volume_cm3``. ``original``, ``edited``: label maps
    (X, Y, Z); ``structures``: those to measure, by label value; ``spacing`` (X, Y, Z) mm."""
    voxel_cm3 = float(np.prod(spacing)) / 1000
    out = {}
    for s in structures:
        before, after = original == s.label, edited == s.label
        either = np.nonzero(before | after)
        if either[0].size:  # the box around both, one voxel wider: the boundary needs its neighbours
            box = tuple(slice(max(int(ix.min()) - 1, 0), int(ix.max()) + 2) for ix in either)
            before, after = before[box], after[box]
        out[s.name] = {
            "edited": bool((before != after).any()),
            "dice": round(_dice(before, after), 4),
            "added_path_length_mm": added_path_length_mm(before, after, spacing),
            "volume_cm3": round(int(after.sum()) * voxel_cm3, 3),
        }
    return out
