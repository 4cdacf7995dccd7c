"""Export of a clinical-size grid allocates nothing per structure at full resolution in
float: probabilities come back inside each structure's box, masks are uint8 or bool
and cropped (tracemalloc counts every NumPy allocation; PyTorch's are not traced, so
the bound on labels_to_input_grid holds for its NumPy side)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import torch
from monai.data import MetaTensor

from engine.infer.grid import labels_to_input_grid
from engine.infer.segment import write_nifti_outputs
from engine.io.dicom_series import read_series
from engine.io.rtstruct import build_rtstruct
from engine.io.rtstruct_check import check_rtstruct
from engine.models.registry import load_model
from engine.results import ResultFolder
from tests.engine.phantom import write_phantom_series

SHAPE = (512, 512, 64)  # (I, J, K): a 512 x 512 CT of 64 slices
SPACING = (0.977, 0.977, 2.0)
MODEL_SPACING = (3.5, 3.5, 2.5)


def _probabilities(reference_affine: np.ndarray, n: int) -> MetaTensor:
    """``n`` balls of 15-30 mm radius spread over the field of view, as (n, X, Y, Z)
    sigmoid-like probabilities on a RAS grid at the model spacing."""
    extent = np.asarray(SHAPE) * SPACING
    shape = tuple(np.ceil(extent / MODEL_SPACING).astype(int))
    affine = np.diag([*MODEL_SPACING, 1.0])
    last = [*(np.asarray(SHAPE) - 1), 1]
    corners = np.array([[0, 0, 0, 1], last]) @ reference_affine.T
    affine[:3, 3] = corners[:, :3].min(axis=0)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    mm = ijk * MODEL_SPACING
    rng = np.random.default_rng(0)
    channels = []
    for _ in range(n):
        centre = rng.uniform(0.25, 0.75, 3) * extent
        radius = rng.uniform(15.0, 30.0)
        distance = np.linalg.norm(mm - centre, axis=-1)
        channels.append(1 / (1 + np.exp((distance - radius) / 2.0)))
    prob = torch.as_tensor(np.stack(channels).astype(np.float32))
    return MetaTensor(prob, affine=torch.as_tensor(affine))


def test_export_of_a_512_grid_allocates_no_full_resolution_float_per_structure(
    tmp_path,
):
    hu = np.full(SHAPE, -1000.0, np.float32)
    hu[100:400, 120:420, :] = 40.0
    write_phantom_series(tmp_path / "ct", hu, spacing=SPACING, signed=True)
    series = read_series(tmp_path / "ct")
    volume = series.volume
    model = load_model("hn-rt")  # 10 structures
    prob = _probabilities(volume.affine, len(model.structures))
    values = [s.label for s in model.structures]
    float_grid = 4 * int(np.prod(SHAPE))  # a float32 array of the input grid: 64 MiB

    tracemalloc.start()
    try:
        labels = labels_to_input_grid(prob, volume, values, 0.5)
        out = ResultFolder(tmp_path / "out")
        table = write_nifti_outputs(volume, labels, model.structures, out)
        rtstruct = build_rtstruct(labels, series, model.structures, model.name, "0" * 64)
        roundtrip = check_rtstruct(rtstruct, labels, series, model.structures)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert sum(s["volume_cm3"] > 0 for s in table) == len(values)
    assert min(roundtrip.values()) >= 0.98
    # Whole-grid arrays (the uint8 labels, the int16 image written as NIfTI, one
    # structure's uint8 NIfTI mask) are 16-32 MiB; one float32 copy of the grid per
    # structure would be 64 MiB each. (The DICOM SEG is left out: under tracemalloc
    # highdicom's per-frame loop takes minutes; its input is the same uint8 label map.)
    assert peak < float_grid, f"export peaked at {peak / 2**20:.0f} MiB traced"
