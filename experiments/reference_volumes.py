"""The physicians' contour volumes (cm3) per structure of a shipped model, over every
contoured OpenKBP case: the evidence for ``engine.infer.predict.MIN_STRUCTURE_CM3``.

    python experiments/reference_volumes.py [--model hn-rt]

Prints, per structure, how many cases contour it and the smallest, 5th-percentile and
median volume, on each CT's own grid (voxel count times voxel volume).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

from engine.models.registry import load_model
from engine.train.openkbp import case_rois, load_case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hn-rt")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "openkbp")
    args = parser.parse_args()
    structures = load_model(args.model).config["structures"]
    volumes: list[list[float]] = [[] for _ in structures]
    for case in sorted(case_rois(args.data)):
        ct, masks, available = load_case(args.data, case, structures)
        voxel_cm3 = float(np.prod(ct.spacing)) / 1000.0
        for i in np.flatnonzero(available):
            volumes[i].append(int(masks[i].sum()) * voxel_cm3)
    print("| structure | cases | smallest cm3 | 5th percentile | median |")
    print("|---|---|---|---|---|")
    for s, v in zip(structures, volumes, strict=True):
        print(f"| {s['name']} | {len(v)} | {min(v):.2f} | {np.percentile(v, 5):.2f} | {np.median(v):.1f} |")


if __name__ == "__main__":
    main()
