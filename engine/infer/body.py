"""The patient's body on a CT: the HU threshold and the box the network needs to look at.

A planning CT's field of view holds much air around the patient (and the couch): on
OpenKBP's head-and-neck CTs the body fills 60-150 of the model grid's 140-185 voxels
left-right and 60-80 anterior-posterior. Running the network only in a box around the
body takes a half to a quarter of the sliding windows; TotalSegmentator's ``--body_seg``
crops for the same reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

# Above this (HU) a voxel is tissue rather than air; lung (about -850 to -600 HU) lies
# below it but inside the body's outline, so the box around the body holds it.
BODY_HU = -500.0
# Margin (mm) kept around the body: a PTV may reach a few mm beyond the skin, and the
# network sees some air around the patient, as in training.
BODY_MARGIN_MM = 20.0


def body_box(mask: np.ndarray, spacing_mm: Sequence[float], margin_mm: float = BODY_MARGIN_MM) -> tuple[slice, ...]:
    """The box around the largest connected component of ``mask`` (the body, not the
    couch or a stray bright voxel in the air), grown by ``margin_mm`` on each side and
    clipped to the grid.

    ``mask``: bool (X, Y, Z), True above ``BODY_HU``; ``spacing_mm``: the grid's voxel
    size (mm) along X, Y, Z. Returns one slice per axis; the whole grid when ``mask``
    is empty (an all-air volume: nothing to crop to).
    """
    labels, n = ndimage.label(mask)
    if n == 0:
        return tuple(slice(0, s) for s in mask.shape)
    largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    box = ndimage.find_objects(labels, max_label=largest)[largest - 1]
    return tuple(
        slice(max(s.start - math.ceil(margin_mm / d), 0), min(s.stop + math.ceil(margin_mm / d), n_voxels))
        for s, d, n_voxels in zip(box, spacing_mm, mask.shape, strict=True)
    )
