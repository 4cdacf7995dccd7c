"""Classical registration with the elastix binary (Klein et al., IEEE TMI 29:196, 2010).

``register(fixed, moving, grid, method)`` runs ``elastix`` with the parameter files of
``method`` (this folder; explained in ``docs/registration.md``) on two images of the
working grid, then ``transformix -def all`` for the deformation field, and returns it
as a working-grid DDF in voxels (``engine.infer.displacement`` convention).

elastix's field is in ITK physical space: LPS mm, u(x) with the fixed point x mapping to
the moving point x + u(x), on the fixed image's grid. ITK writes it into NIfTI without
converting the vectors to RAS (checked with elastix 5.0.1, Debian; pinned by
``tests/engine/test_propagate.py``), so R and A components change sign here.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
import torch

from engine.errors import ToolError
from engine.infer.displacement import Grid
from engine.infer.methods import METHOD_PARAMETERS

PARAMETER_DIR = Path(__file__).resolve().parent
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
# A run longer than this is stuck; the job fails with a message instead of hanging.
TIMEOUT_S = 3600


class ElastixError(ToolError):
    """elastix or transformix is missing, failed, or wrote a field we cannot use."""


def parameters_sha256(method: str) -> str:
    """SHA-256 of the method's parameter files in order (its provenance, like weights)."""
    digest = hashlib.sha256()
    for name in METHOD_PARAMETERS[method]:
        digest.update((PARAMETER_DIR / name).read_bytes())
    return digest.hexdigest()


def _run(command: list[str], log: Path) -> None:
    if shutil.which(command[0]) is None:
        raise ElastixError(f"{command[0]} is not installed (Debian package elastix; make test installs it)")
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if done.returncode != 0:
        text = log.read_text(errors="replace") if log.exists() else done.stdout
        errors = [line for line in text.splitlines() if "ERROR" in line.upper()]
        raise ElastixError(f"{command[0]} failed (exit {done.returncode}): " + (" | ".join(errors[-3:]) or text[-500:]))


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(np.asarray(array, dtype=np.float32), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def read_deformation_field(path: Path, grid: Grid) -> torch.Tensor:
    """transformix's ``deformationField.nii`` (X, Y, Z, 1, 3), LPS mm on ``grid`` ->
    DDF (3, X, Y, Z) in ``grid`` voxels.

    Raises:
        ElastixError: the field is not on ``grid``.
    """
    image = cast(nib.Nifti1Image, nib.load(path))
    field = np.asarray(image.dataobj, dtype=np.float64).reshape(*image.shape[:3], 3)
    if field.shape[:3] != tuple(grid.shape) or not np.allclose(image.affine, grid.affine, atol=1e-3):
        raise ElastixError("transformix wrote a deformation field on another grid")
    ras_mm = field @ LPS_TO_RAS.T
    voxels = ras_mm @ np.linalg.inv(grid.affine[:3, :3]).T
    return torch.as_tensor(voxels, dtype=torch.float32).permute(3, 0, 1, 2)


def register(
    fixed: np.ndarray,
    moving: np.ndarray,
    grid: Grid,
    method: str,
    fixed_mask: np.ndarray | None = None,
) -> torch.Tensor:
    """Register ``moving`` to ``fixed`` (both (X, Y, Z) float on ``grid``) with elastix.

    ``fixed_mask`` (X, Y, Z) bool, when given, is where elastix samples the similarity
    metric (``-fMask``): the patient, not the air around, so the samples drive the
    transform where the anatomy is. The transform still covers the whole grid.

    Returns the DDF (3, X, Y, Z) in ``grid`` voxels, MONAI ``Warp`` convention.

    Raises:
        KeyError: ``method`` is not one of ``METHOD_PARAMETERS``.
        ElastixError: the binaries are missing or fail.
    """
    files = [PARAMETER_DIR / name for name in METHOD_PARAMETERS[method]]
    with tempfile.TemporaryDirectory(prefix="delineo-elastix-") as tmp:
        work = Path(tmp)
        _save(fixed, grid.affine, work / "fixed.nii")
        _save(moving, grid.affine, work / "moving.nii")
        command = [
            "elastix",
            "-f",
            str(work / "fixed.nii"),
            "-m",
            str(work / "moving.nii"),
        ]
        if fixed_mask is not None and fixed_mask.any():
            mask = nib.Nifti1Image(fixed_mask.astype(np.uint8), grid.affine)
            mask.set_sform(grid.affine, code=1)
            nib.save(mask, work / "fixed_mask.nii")
            command += ["-fMask", str(work / "fixed_mask.nii")]
        for f in files:
            command += ["-p", str(f)]
        _run([*command, "-out", str(work)], work / "elastix.log")
        last = work / f"TransformParameters.{len(files) - 1}.txt"
        (work / "field").mkdir()
        _run(
            [
                "transformix",
                "-def",
                "all",
                "-tp",
                str(last),
                "-out",
                str(work / "field"),
            ],
            work / "field" / "transformix.log",
        )
        return read_deformation_field(work / "field" / "deformationField.nii", grid)
