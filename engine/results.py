"""The result folder: the one contract between what writes results and what reads them.

``segment``, ``audit`` and ``propagate`` write a result folder; ``propagate`` reads one
as planning contours; the web app serves it, and writes the revisions and the final
RTSTRUCT of a job as result folders of their own inside it (``revisions/<n>/``,
``final/``). Every file name is spelt here and nowhere else:

=====================  ============================================================
``image.nii.gz``       the scan, int16 (HU for CT), (I, J, K) on the input grid
``labels.nii.gz``      uint8 label map on the same grid (0 = background)
``structures.json``    one entry per structure: label, name, color [r, g, b],
                       volume_cm3, file (its mask, relative to the folder)
``structures/``        one uint8 0/1 mask per structure, ``<name>.nii.gz``
``rtstruct.dcm``       RT Structure Set, after its round-trip check
``rtstruct_check.json``  that check: min_dice, threshold, Dice per structure
``seg.dcm``            DICOM Segmentation
``ct_dicom/``, ``ct_dicom.zip``  NIfTI input written as a DICOM CT series
``domain.json``        whether the scan is inside the model's domain
``audit.json``         a contour audit
``report.json``        a contour propagation's report
``ddf.nii.gz``         its displacement field, (I, J, K, 3) mm RAS
``direct_labels.nii.gz``  the joint model's own segmentation of the daily scan
``choices.json``       per structure, the contours the physician kept (``final/``)
``structures.zip``     ``structures/`` and ``structures.json`` zipped (the web app's)
=====================  ============================================================

Reading and writing go through :class:`ResultFolder`; writes are atomic (a reader sees
the old file or the whole new one). Standard library, NumPy, SciPy and nibabel only: the
web process reads result folders without PyTorch. :class:`StructureEntry` types an entry
of ``structures.json``; :class:`RevisionExport` is what a revision's exports are built
from (here rather than beside the exporters in ``engine.io.exports``, so that the web
process builds one without loading the DICOM writers).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired

import numpy as np

from engine.io.atomic import write_atomically
from engine.io.nifti import read_labels, write_nifti
from engine.structure import Structure, StructureDict
from engine.volume import LabelMap, Volume, hu_as_int16

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


class StructureEntry(StructureDict):
    """One entry of ``structures.json``: the structure (``Structure.to_dict``), its
    ``volume_cm3`` in the label map, and ``file``, its mask relative to the folder (absent
    when no masks were written)."""

    volume_cm3: float
    file: NotRequired[str]


def safe_file_stem(name: str, number: int, taken: set[str]) -> str:
    """A file name stem for a structure or ROI name: letters, digits and ``._+-`` only,
    no leading dot, at most 64 characters, unique (case-insensitively) among ``taken``,
    which is updated. Falls back to ``roi_<number>`` for a name with nothing usable."""
    stem = _UNSAFE.sub("_", name).strip("._")[:64] or f"roi_{number}"
    if stem.lower() in taken:
        stem = f"{stem}_{number}"
    while stem.lower() in taken:  # the suffixed name may itself be an ROI's name
        stem += "_"
    taken.add(stem.lower())
    return stem


class ResultFolder:
    """A folder of results at ``path`` (see the module doc for what it holds)."""

    IMAGE = "image.nii.gz"
    LABELS = "labels.nii.gz"
    DIRECT_LABELS = "direct_labels.nii.gz"
    STRUCTURES = "structures.json"
    MASKS = "structures"
    STRUCTURES_ZIP = "structures.zip"
    RTSTRUCT = "rtstruct.dcm"
    RTSTRUCT_CHECK = "rtstruct_check.json"
    SEG = "seg.dcm"
    CT_DICOM = "ct_dicom"
    CT_DICOM_ZIP = "ct_dicom.zip"
    DOMAIN = "domain.json"
    AUDIT = "audit.json"
    PROPAGATION = "report.json"
    DDF = "ddf.nii.gz"
    CHOICES = "choices.json"
    # Folders of the web app inside a job's result folder, each a result folder itself.
    FINAL = "final"
    REVISIONS = "revisions"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"ResultFolder({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return (self.path / name).exists()

    def sub(self, folder: str) -> ResultFolder:
        """The result folder ``folder`` inside this one (``final``, ``revisions/2``)."""
        return ResultFolder(self.path / folder)

    def revision(self, number: int) -> ResultFolder:
        return self.sub(f"{self.REVISIONS}/{number}")

    # --- images ---------------------------------------------------------------------

    def write_image(self, volume: Volume) -> Path:
        """``image.nii.gz``: ``volume`` rounded and clipped to int16."""
        return write_nifti(Volume(hu_as_int16(volume.array), volume.affine), self / self.IMAGE)

    def write_labels(self, labels: LabelMap, name: str = LABELS) -> Path:
        return write_nifti(labels, self / name)

    def read_labels(self, name: str = LABELS) -> LabelMap:
        """Raises ``engine.io.nifti.NiftiError`` when it is missing or unreadable."""
        return read_labels(self / name)

    # --- structures -----------------------------------------------------------------

    def write_structures(
        self, labels: LabelMap, structures: Sequence[Structure], masks: bool = True
    ) -> list[StructureEntry]:
        """``structures.json`` for ``structures`` of the label map ``labels`` (each with its
        volume in cm3), and with ``masks`` one uint8 0/1 mask (I, J, K) of the whole grid
        per structure in ``structures/``, each filled from its structure's box. Returns
        the entries of ``structures.json``."""
        table: list[StructureEntry] = []
        taken = {self.MASKS}
        for s in structures:
            box, inside = labels.mask_in_box(s.label)
            volume_cm3 = round(int(np.count_nonzero(inside)) * labels.voxel_volume_mm3 / 1000.0, 3)
            entry: StructureEntry = {**s.to_dict(), "volume_cm3": volume_cm3}
            if masks:
                entry["file"] = f"{self.MASKS}/{safe_file_stem(s.name, s.label, taken)}.nii.gz"
                mask = np.zeros(labels.array.shape, dtype=np.uint8, order="F")
                mask[box] = inside
                write_nifti(LabelMap(mask, labels.affine), self / entry["file"])
            table.append(entry)
        self.write_json(self.STRUCTURES, table)
        return table

    def read_structures(self) -> list[StructureEntry]:
        """The entries of ``structures.json`` (label, name, color, volume_cm3, file).

        Raises:
            OSError, ValueError: missing or not JSON.
        """
        return list(self.read_json(self.STRUCTURES))

    def structures(self) -> list[Structure]:
        """``structures.json`` as structures (interpreted type from each TG-263 name)."""
        return [Structure.from_dict(s) for s in self.read_structures()]

    # --- reports --------------------------------------------------------------------

    def write_json(self, name: str, document: object, allow_nan: bool = False) -> Path:
        """``name`` as indented JSON; a NaN is refused (it is not JSON) unless ``allow_nan``."""
        text = json.dumps(document, indent=1, allow_nan=allow_nan)
        return write_atomically(self / name, lambda tmp: Path(tmp).write_text(text))

    def read_json(self, name: str) -> Any:
        """The JSON document ``name`` (a dict or a list). Raises OSError (missing) or
        ValueError (not JSON)."""
        return json.loads((self / name).read_text())


@dataclass(frozen=True)
class RevisionExport:
    """A revision of a job's label map to export (``engine.io.exports``: its RTSTRUCT or
    DICOM SEG; or its masks and ``structures.json``).

    ``folder``: the job's result folder; ``scan_input``: the job's scan (DICOM folder,
    zip, or NIfTI, whose CT series the engine wrote as ``ct_dicom/``) and ``series_key``
    its series (empty: the only one); ``labels_file``: the revision's label map, relative
    to ``folder`` (uint8, the scan's grid); ``out``: the revision's folder, where the
    export is written; ``structures``: those of the label map; ``provenance``: (model
    name, weights SHA-256, empty for none); ``edited``: names of the structures corrected
    by hand since the model's output.
    """

    folder: ResultFolder
    scan_input: Path
    series_key: str
    labels_file: str
    out: ResultFolder
    structures: tuple[Structure, ...]
    provenance: tuple[str, str]
    edited: frozenset[str]
