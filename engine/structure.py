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


def mirror_order(names: list[str]) -> list[int]:
    """The channel order after a left-right flip: TG-263 paired structures ``X_L`` and
    ``X_R`` swap places, since a mirrored left parotid is a right one; the rest stay.

    >>> mirror_order(["Brainstem", "Parotid_R", "Parotid_L"])
    [0, 2, 1]
    """
    index = {n: i for i, n in enumerate(names)}
    order = list(range(len(names)))
    for i, n in enumerate(names):
        for a, b in (("_L", "_R"), ("_R", "_L")):
            if n.endswith(a) and n[: -len(a)] + b in index:
                order[i] = index[n[: -len(a)] + b]
    return order
