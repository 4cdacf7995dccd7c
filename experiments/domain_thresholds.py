"""Domain of the head-and-neck models (hn-oar, hn-rt): reference figures from the OpenKBP
training cases, thresholds from the val split, false-alarm rates on val and test.

    python experiments/domain_thresholds.py [--write-cards]

Writes experiments/results/domain-hn.json; ``--write-cards`` also stores the ``domain``
section in engine/weights/hn-oar.json and hn-rt.json (``engine.train.publish.add_domain``).

Thresholds (20 val cases: "at most 1 % flagged" means none, so each threshold is the
least strict value that flags no val case; the output signals are measured on each
model's own delineation of the val and test CTs, engine.infer.segment.segment_volume):
- extent: the smallest val superior-inferior extent, times 0.9;
- body volume (voxels above -500 HU): the smallest val body volume, times 0.9;
- HU histogram: the largest val distance to the training mean histogram, times 1.1;
- expected structures: those of ANATOMY that both models find on every val CT whose
  reference does not contour them (where it does, a miss is the model's failure, which the
  check rightly flags, not evidence that a scan of the region may lack the structure;
  since 2026-12-07 hn128's network misses the brainstem of val case pt_89, which the
  reference contours);
- volumes: at most the 99th percentile of the training contours per structure (contours,
  as the network has not been run on the training CTs) times the smallest factor of
  FACTORS under which no val delineation has a structure above it. No lower bound: the
  networks leave small fragments of structures a case lacks (PTV63, Esophagus), and a
  structure too small to trust is judged by "expected structures" instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.infer.domain import (  # noqa: E402 (after the path is set)
    RELATIONS,
    body_histogram,
    body_volume_cm3,
    histogram_distance,
    output_findings,
    structure_measures,
    superior_extent_mm,
)
from engine.infer.segment import segment_volume  # noqa: E402
from engine.io.nifti import read_volume  # noqa: E402
from engine.models.registry import load_model  # noqa: E402
from engine.volume import LabelMap  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "openkbp"
OUT = ROOT / "experiments" / "results" / "domain-hn.json"
FACTORS = [1.0, 1.25, 1.5, 2.0, 3.0, 4.0]
MODELS = ("hn-oar", "hn-rt")
# What any head-and-neck CT from above the brainstem to below the larynx shows.
ANATOMY = ("Brainstem", "SpinalCord", "Parotid_R", "Parotid_L", "Mandible")
# The OpenKBP ROI name of each model structure (hn-rt.json "source").
STRUCTURES = json.loads((ROOT / "engine" / "weights" / "hn-rt.json").read_text())["structures"]


def case_figures(case: str, models: dict) -> dict:
    """Extent, body histogram and per-structure measures of the contours of one OpenKBP
    case, and of each of ``models``' delineation of it."""
    img = nib.load(DATA / case / "ct.nii.gz")
    volume = read_volume(DATA / case / "ct.nii.gz")
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    for s in STRUCTURES:
        path = DATA / case / f"mask_{s['source']}.nii.gz"
        if path.exists():
            labels[np.asarray(nib.load(path).dataobj) > 0] = s["label"]
    names = {s["label"]: s["name"] for s in STRUCTURES}
    predicted = {}
    for name, model in models.items():
        own = {s.label: s.name for s in model.structures}
        predicted[name] = structure_measures(segment_volume(volume, model), own)
    return {
        "case": case,
        "extent_mm": superior_extent_mm(volume),
        "body_cm3": body_volume_cm3(volume),
        "histogram": body_histogram(volume.array),
        "measures": structure_measures(LabelMap(labels, img.affine), names),
        "predicted": predicted,
    }


def image_flags(case: dict, domain: dict) -> bool:
    """Whether the image signals (extent, body volume, HU histogram) of a case flag it."""
    return (
        case["extent_mm"] < domain["extent_mm"]["threshold"]
        or case["body_cm3"] < domain["body_cm3"]["threshold"]
        or histogram_distance(case["histogram"], domain["hu_histogram"]["reference"])
        > domain["hu_histogram"]["threshold"]
    )


def volume_ranges(train: list[dict], factor: float) -> dict[str, list[float]]:
    out = {}
    for s in STRUCTURES:
        v = [c["measures"][s["name"]]["volume_cm3"] for c in train if s["name"] in c["measures"]]
        out[s["name"]] = [0.0, round(float(np.percentile(v, 99)) * factor, 2)]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write-cards", action="store_true")
    args = p.parse_args()
    split = json.loads((DATA / "split.json").read_text())
    models = {name: load_model(name) for name in MODELS}
    figures = {
        k: [
            case_figures(c, models if k in ("val", "test") else {})
            for c in split[k]
            if (DATA / c / "ct.nii.gz").exists()
        ]
        for k in ("train", "train_extra", "val", "test")
    }
    train = figures["train"] + figures["train_extra"]
    val, test = figures["val"], figures["test"]
    reference = np.mean([c["histogram"] for c in train], axis=0)
    # A val CT counts against a structure only where its reference has no contour of it either
    # (the scan may not show it); a miss where the reference shows it is the model's, and the
    # warning it gives there is a true one.
    expected = [s for s in ANATOMY if all(s in c["predicted"][m] or s in c["measures"] for c in val for m in MODELS)]
    val_dist = [histogram_distance(c["histogram"], reference) for c in val]
    domain = {
        "modality": "CT",
        "region": "head and neck",
        "field_of_view": "from above the brainstem to below the larynx",
        "extent_mm": {
            "threshold": round(0.9 * min(c["extent_mm"] for c in val), 1),
            "train_range": [round(f(c["extent_mm"] for c in train), 1) for f in (min, max)],
        },
        "body_cm3": {
            "threshold": round(0.9 * min(c["body_cm3"] for c in val), 1),
            "train_range": [round(f(c["body_cm3"] for c in train), 1) for f in (min, max)],
        },
        "hu_histogram": {
            "bins_hu": [-500, 1500, 50],
            "threshold": round(1.1 * max(val_dist), 3),
            "reference": [round(float(x), 5) for x in reference],
        },
        "expected_structures": expected,
        "relations": [r[4].replace(" is not ", " is ").replace(" not ", " ") for r in RELATIONS],
        "command": "python experiments/domain_thresholds.py --write-cards",
    }
    for factor in FACTORS:  # the volumes alone: a missing expected structure is judged above
        domain["volume_cm3"] = volume_ranges(train, factor)
        volumes_only = {**domain, "expected_structures": []}
        if not any(output_findings(c["predicted"][m], volumes_only)[0] for c in val for m in MODELS):
            break
    # The largest factor when none clears val: the val rate below then says so.
    domain["volume_factor"] = factor

    def rates(cases: list[dict]) -> dict:
        image = [image_flags(c, domain) for c in cases]
        out: dict = {
            "n": len(cases),
            "flagged_image": int(sum(image)),
            "flagged_image_cases": [c["case"] for c, f in zip(cases, image) if f],
        }
        for m in MODELS:
            output = [bool(output_findings(c["predicted"][m], domain)[0]) for c in cases]
            either = [a or b for a, b in zip(image, output)]
            out[m] = {
                "flagged_output": int(sum(output)),
                "flagged_any": int(sum(either)),
                "rate_any": round(sum(either) / len(cases), 4),
                "flagged_cases": [c["case"] for c, f in zip(cases, either) if f],
                "reasons": sorted({r for c in cases for r in output_findings(c["predicted"][m], domain)[0]}),
            }
        return out

    result = {
        "domain": domain,
        "weights_sha256": {m: models[m].weights_sha256 for m in MODELS},
        "val": rates(val),
        "test": rates(test),
    }
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("val", "test")}, indent=1))
    if args.write_cards:
        from engine.train.publish import add_domain

        for name in ("hn-oar", "hn-rt"):
            add_domain(name, domain)


if __name__ == "__main__":
    main()
