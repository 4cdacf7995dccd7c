"""Round-trip check of an RTSTRUCT export: read the contours back and compare with the labels.

Every RTSTRUCT Delineo writes is rasterised back onto the series' grid with
``engine.io.rtstruct_import`` (even-odd fill at pixel centres, as a planning system
reads it) and compared per structure with the label map it was written from (Dice,
``engine.metrics.dice``). A structure below ``ROUNDTRIP_MIN_DICE`` fails the export: the
file would show the physician something else than the delineation on screen.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from engine.errors import ExportError
from engine.io.atomic import write_atomically
from engine.io.dicom_series import DicomSeries
from engine.io.rtstruct_import import RTStructImportError, import_rtstruct
from engine.metrics import dice
from engine.structure import Structure
from engine.volume import LabelMap

ROUNDTRIP_MIN_DICE = 0.98


class RTStructExportError(ExportError):
    """An RTSTRUCT whose contours do not reproduce the label map; the message names the structure."""


def _union(boxes: list[tuple[slice, ...]]) -> tuple[slice, ...]:
    """The smallest box holding every box of ``boxes`` (an empty box for none)."""
    if not boxes:
        return (slice(0, 0),) * 3
    return tuple(slice(min(s.start for s in axis), max(s.stop for s in axis)) for axis in zip(*boxes, strict=True))


def _in_box(mask: np.ndarray, box: tuple[slice, ...], target: tuple[slice, ...]) -> np.ndarray:
    """``mask`` (the voxels of ``box``) as a bool array of box ``target``, which holds
    ``box`` whenever the mask has any voxel."""
    out = np.zeros(tuple(s.stop - s.start for s in target), dtype=bool)
    if mask.any():
        inner = zip(box, target, strict=True)
        out[tuple(slice(b.start - t.start, b.stop - t.start) for b, t in inner)] = mask
    return out


def roundtrip_dice(
    ds: Dataset, labels: LabelMap, series: DicomSeries, structures: Sequence[Structure]
) -> dict[str, float]:
    """Dice per structure name between ``ds``' contours, rasterised on ``series``, and
    ``labels`` (I, J, K) == structure.label. A structure missing from ``ds`` scores 0.

    Raises:
        RTStructExportError: ``ds`` cannot be read back as an RTSTRUCT on ``series``.
    """
    try:
        rois = {roi.name: roi for roi in import_rtstruct(ds, series)}
    except RTStructImportError as exc:
        raise RTStructExportError(f"the RTSTRUCT written cannot be read back: {exc}") from exc
    scores = {}
    for s in structures:
        roi = rois.get(s.name)
        if roi is None:
            scores[s.name] = 0.0
            continue
        # Compared inside the union of the two boxes: the rest of the grid is empty in both.
        expected_box, expected = labels.mask_in_box(s.label)
        read_box = roi.box or tuple(slice(0, n) for n in labels.array.shape)
        union = _union([b for b, m in ((expected_box, expected), (read_box, roi.crop)) if m.any()])
        scores[s.name] = dice(_in_box(roi.crop, read_box, union), _in_box(expected, expected_box, union))
    return scores


def check_rtstruct(
    ds: Dataset,
    labels: LabelMap,
    series: DicomSeries,
    structures: Sequence[Structure],
    report_path: str | os.PathLike | None = None,
    threshold: float = ROUNDTRIP_MIN_DICE,
) -> dict[str, float]:
    """Round-trip Dice per structure; writes ``report_path`` (JSON) when given.

    The report is ``{"min_dice": float, "threshold": float, "structures": {name: dice}}``
    and is written before any failure is raised, so a failed export can be inspected.

    Raises:
        RTStructExportError: a structure's Dice is below ``threshold`` (the message names
            every such structure), or ``ds`` cannot be read back.
    """
    scores = roundtrip_dice(ds, labels, series, structures)
    if report_path is not None:
        report = {
            "min_dice": round(min(scores.values(), default=1.0), 6),
            "threshold": threshold,
            "structures": {name: round(d, 6) for name, d in scores.items()},
        }
        text = json.dumps(report, indent=1)
        write_atomically(report_path, lambda tmp: Path(tmp).write_text(text))
    failed = {name: d for name, d in scores.items() if d < threshold}
    if failed:
        listed = ", ".join(f"{name} (Dice {d:.3f})" for name, d in failed.items())
        raise RTStructExportError(
            f"RTSTRUCT export failed its round-trip check: the contours of {listed} do not "
            f"reproduce the delineation (Dice below {threshold})"
        )
    return scores
