"""One delineated structure of a model or a structure set, without the model code.

Kept apart from ``engine.models.registry`` (which imports PyTorch and MONAI) so that
writing or checking an RTSTRUCT or DICOM SEG, as the web process does for the final
RTSTRUCT of a propagation, does not load them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Structure:
    """``label``: its value in the label map; ``name``: TG-263; ``color``: RGB 0-255;
    ``interpreted_type``: RT ROI Interpreted Type (PS3.3 C.8.8.8), ORGAN, PTV, ..."""

    label: int
    name: str
    color: tuple[int, int, int]
    interpreted_type: str
