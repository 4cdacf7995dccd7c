"""Is a scan inside the domain a segmentation model was trained for?

Cheap, explainable signals, each compared with a threshold stored in the model card's
``domain`` section (computed by ``experiments/domain_thresholds.py`` on the OpenKBP
train split, thresholds set on the val split):

- the DICOM Modality tag: another modality than the card's is refused (``DomainError``);
- the scan's superior-inferior extent in mm (too short to hold the region);
- the volume of body in it (voxels above -500 HU, cm3): too little tissue to show the
  region, e.g. a CT blanked outside a few structures;
- the HU histogram of the body (HU > -500) against the training set's mean histogram,
  as total-variation distance (0 = same, 1 = no overlap);
- the model's own output: expected structures found, volume per structure within the
  card's range, relative positions (brainstem superior to the spinal cord, mandible
  anterior to the brainstem, the left parotid left of the right one).

The result is a dict written as ``domain.json`` in the result folder.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

from engine.errors import InputError
from engine.infer.body import BODY_HU
from engine.volume import LabelMap, Volume

# Histogram bins (HU) of the body's voxels: shared by the check and the threshold script.
HU_BINS = np.arange(-500.0, 1550.0, 50.0)

# (structure above/anterior/left, structure below/posterior/right, RAS axis, sign):
# the first centroid minus the second along the axis must have this sign. RAS+: x to
# the patient's left is negative, y anterior positive, z superior positive.
RELATIONS = [
    ("Brainstem", "SpinalCord", 2, 1, "the brainstem is not above the spinal cord"),
    ("Mandible", "Brainstem", 1, 1, "the mandible is not in front of the brainstem"),
    ("Parotid_L", "Parotid_R", 0, -1, "the left parotid is not left of the right one"),
]


class DomainError(InputError):
    """The scan is of a kind the model cannot delineate at all (e.g. MR into a CT model)."""


def check_modality(modality: str, domain: dict, model_name: str) -> None:
    """Refuse a DICOM series whose Modality tag is not the card's (empty tag: allowed).

    Raises:
        DomainError: e.g. an MR or PET series given to a CT model.
    """
    if modality and modality.upper() != domain["modality"]:
        raise DomainError(
            f"this is a {modality} series; {model_name} delineates {domain['region']} {domain['modality']} scans only"
        )


def superior_extent_mm(volume: Volume) -> float:
    """Length in mm covered by the voxel axis nearest superior-inferior (RAS z)."""
    axis = int(np.argmax(np.abs(volume.affine[2, :3])))
    step = float(np.linalg.norm(volume.affine[:3, axis]))
    return step * volume.array.shape[axis]


def body_volume_cm3(volume: Volume) -> float:
    """Volume in cm3 of the voxels of ``volume`` (HU) above ``BODY_HU``."""
    voxel_mm3 = abs(float(np.linalg.det(volume.affine[:3, :3])))
    return float(np.count_nonzero(volume.array > BODY_HU)) * voxel_mm3 / 1000.0


def _extent_reason(extent: float, domain: dict) -> list[str]:
    """The sentence for a scan ``extent`` mm long from top to bottom, if too short."""
    if extent >= domain["extent_mm"]["threshold"]:
        return []
    return [
        f"the scan covers {extent:.0f} mm from top to bottom; the "
        f"{domain['region']} ({domain['field_of_view']}) needs at least "
        f"{domain['extent_mm']['threshold']:.0f} mm"
    ]


def preflight_findings(series: dict, domain: dict, model_name: str) -> list[str]:
    """What one series' pre-flight report already says before a job is queued: its
    Modality tag against the card's (the job would be refused) and its extent.

    ``series``: ``engine.io.preflight.series_report``'s entry (``modality``, ``size``
    and ``spacing_mm`` per voxel axis, ``axcodes``), read from the headers only.
    Returns sentences for a physician (empty when nothing is known to be wrong).
    """
    reasons = []
    try:
        check_modality(series.get("modality") or "", domain, model_name)
    except DomainError as refused:
        reasons.append(f"{refused}, so the job would be refused")
    axcodes, size, spacing = (series.get(k) for k in ("axcodes", "size", "spacing_mm"))
    if axcodes and size and spacing:
        axis = next((i for i, c in enumerate(axcodes) if c in "SI"), None)
        if axis is not None:
            reasons += _extent_reason(size[axis] * spacing[axis], domain)
    return reasons


def body_histogram(hu: np.ndarray) -> np.ndarray:
    """Normalised histogram over ``HU_BINS`` of the voxels above ``BODY_HU``
    (``hu``: any shape, HU); all zeros when no voxel is above."""
    # In memory order (a view for C or Fortran order): boolean indexing walks in C order,
    # ten times slower over a Fortran-order 512 x 512 x 200 volume.
    flat = np.ravel(hu, order="K")
    body = flat[flat > BODY_HU]
    counts, _ = np.histogram(np.clip(body, HU_BINS[0], HU_BINS[-1]), HU_BINS)
    total = counts.sum()
    return counts / total if total else counts.astype(float)


def histogram_distance(hist: np.ndarray, reference: np.ndarray) -> float:
    """Total-variation distance between two normalised histograms, in [0, 1]."""
    return 0.5 * float(np.abs(np.asarray(hist) - np.asarray(reference)).sum())


def structure_measures(labels: LabelMap, names: dict[int, str]) -> dict[str, dict]:
    """Per structure found in ``labels`` (uint8 (I, J, K), RAS affine): volume in cm3
    and centroid in RAS mm. ``names`` maps label value -> structure name."""
    out = {}
    # Within each structure's box: a full-grid float copy of a 512 x 512 x 300 CT is 600 MB.
    for value, box in labels.boxes.items():
        if value not in names:
            continue
        inside = labels.array[box] == value
        centre = np.array(ndimage.center_of_mass(inside)) + [s.start for s in box]
        ras = nib.affines.apply_affine(labels.affine, centre)
        out[names[value]] = {
            "volume_cm3": round(float(np.count_nonzero(inside)) * labels.voxel_volume_mm3 / 1000.0, 3),
            "centroid_mm": [round(float(x), 1) for x in ras],
        }
    return out


def image_findings(volume: Volume, domain: dict) -> tuple[dict, list[str]]:
    """The image signals of ``volume`` (float32 (I, J, K), HU, RAS affine) and the
    reasons (sentences for a physician) those outside the card's thresholds give."""
    extent = superior_extent_mm(volume)
    body = body_volume_cm3(volume)
    distance = histogram_distance(body_histogram(volume.array), domain["hu_histogram"]["reference"])
    reasons = _extent_reason(extent, domain)
    if body < domain["body_cm3"]["threshold"]:
        reasons.append(
            f"the scan shows only {body:.0f} cm3 of tissue; a {domain['region']} "
            f"{domain['modality']} ({domain['field_of_view']}) shows at least "
            f"{domain['body_cm3']['threshold']:.0f} cm3"
        )
    if distance > domain["hu_histogram"]["threshold"]:
        reasons.append(
            f"the scan's densities do not look like a {domain['region']} "
            f"{domain['modality']} (HU histogram distance {distance:.2f}, "
            f"limit {domain['hu_histogram']['threshold']:.2f})"
        )
    signals = {
        "extent_mm": round(extent, 1),
        "body_cm3": round(body, 1),
        "hu_histogram_distance": round(distance, 3),
    }
    return signals, reasons


def output_findings(measures: dict[str, dict], domain: dict) -> tuple[list[str], dict[str, str]]:
    """Reasons from the delineation itself (``structure_measures``), and per implausible
    structure why it is implausible."""
    reasons: list[str] = []
    marked: dict[str, str] = {}
    missing = [s for s in domain["expected_structures"] if s not in measures]
    if missing:
        reasons.append(
            f"no {', '.join(missing)} found: the scan may not show the whole "
            f"{domain['region']} ({domain['field_of_view']})"
        )
        marked.update({s: "not found" for s in missing})
    for name, m in measures.items():
        low, high = domain["volume_cm3"].get(name, (0.0, np.inf))
        if not low <= m["volume_cm3"] <= high:
            marked[name] = f"{m['volume_cm3']:.1f} cm3, outside {low:.1f} to {high:.1f} cm3"
    if any(v != "not found" for v in marked.values()):
        reasons.append(
            "structures of implausible size: " + "; ".join(f"{k} {v}" for k, v in marked.items() if v != "not found")
        )
    for a, b, axis, sign, text in RELATIONS:
        if a in measures and b in measures:
            delta = measures[a]["centroid_mm"][axis] - measures[b]["centroid_mm"][axis]
            if delta * sign <= 0:
                reasons.append(text)
                marked.setdefault(a, text)
    return reasons, marked


def check_domain(volume: Volume, labels: LabelMap, names: dict[int, str], domain: dict, model_name: str) -> dict:
    """The whole check, as written to ``domain.json``: ``in_domain`` (bool), ``reasons``
    (sentences), ``structures`` (implausible structure -> why), ``signals`` (values)."""
    signals, reasons = image_findings(volume, domain)
    measures = structure_measures(labels, names)
    more, marked = output_findings(measures, domain)
    reasons += more
    if reasons:
        reasons.insert(
            0,
            f"{model_name} delineates {domain['region']} {domain['modality']} scans; "
            "this scan looks outside that domain",
        )
    return {
        "in_domain": not reasons,
        "reasons": reasons,
        "structures": marked,
        "signals": {**signals, "structures": measures},
    }
