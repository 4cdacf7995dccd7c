"""One delineated structure of a model or a structure set, without the model code.

Kept apart from ``engine.models.registry`` (which imports PyTorch and MONAI) so that
reading a result folder (``engine.results``) or a model card (``engine.models.card``)
does not load them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict


class StructureDict(TypedDict):
    """A structure as JSON (``structures.json``, a model card, the web app's job record):
    ``label`` in the label map, TG-263 ``name``, ``color`` [r, g, b] 0-255."""

    label: int
    name: str
    color: list[int]


@dataclass(frozen=True)
class Structure:
    """``label``: its value in the label map; ``name``: TG-263; ``color``: RGB 0-255;
    ``interpreted_type``: RT ROI Interpreted Type (PS3.3 C.8.8.8), ORGAN, PTV, ..."""

    label: int
    name: str
    color: tuple[int, int, int]
    interpreted_type: str

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> Structure:
        """A structure from its JSON (``StructureDict``; other keys, such as the volume of
        a ``structures.json`` entry, are ignored), its interpreted type from the TG-263
        name (``interpreted_type_of``).

        Raises:
            KeyError: no label, name or color; ValueError, TypeError: a label or colour
                that is not whole numbers, or a colour that is not 3 of them.
        """
        name = str(entry["name"])
        r, g, b = (int(c) for c in entry["color"])
        return cls(int(entry["label"]), name, (r, g, b), interpreted_type_of(name))

    def to_dict(self) -> StructureDict:
        """As JSON: label, name, color [r, g, b] (the interpreted type follows from the name)."""
        return {"label": self.label, "name": self.name, "color": list(self.color)}


# TG-263 target-volume prefixes: their RT ROI Interpreted Type is the prefix itself.
TARGET_PREFIXES = ("PTV", "CTV", "GTV", "ITV")


def interpreted_type_of(name: str) -> str:
    """The RT ROI Interpreted Type of a TG-263 name: PTV, CTV, GTV or ITV for a target
    volume of that prefix, ORGAN otherwise.

    >>> interpreted_type_of("PTV70"), interpreted_type_of("Parotid_L")
    ('PTV', 'ORGAN')
    """
    return next((p for p in TARGET_PREFIXES if name.upper().startswith(p)), "ORGAN")


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
