"""Time each part of the export alone, on a label map that `bench/fullres.py` wrote.

Reads the DICOM series ``RUN/ct_dicom`` and ``RUN/MODEL/labels.nii.gz``, then times, in
this process and one after the other: the NIfTI outputs (with the structure table), the
RTSTRUCT (build, round-trip check, write) and the DICOM SEG (build, write). Outputs go
to a temporary folder.

    .venv/bin/python bench/export_parts.py [--run var/bench/fullres] [--model hn-rt]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.infer.segment import write_nifti_outputs
from engine.io.dicom_seg import build_segmentation, write_segmentation
from engine.io.dicom_series import read_series
from engine.io.rtstruct import build_rtstruct, write_rtstruct
from engine.io.rtstruct_check import check_rtstruct
from engine.models.registry import load_model
from engine.results import ResultFolder
from engine.volume import LabelMap


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=REPO / "var/bench/fullres")
    parser.add_argument("--model", default="hn-rt")
    args = parser.parse_args()

    run = ResultFolder(args.run)
    series = read_series(run / run.CT_DICOM)
    read = run.sub(args.model).read_labels()
    # Fortran order, as segment_volume makes it.
    labels = LabelMap(np.asfortranarray(read.array), read.affine)
    model = load_model(args.model)
    out = ResultFolder(tempfile.mkdtemp(prefix="export_parts."))
    rows = []

    def timed(name, make):
        start = time.perf_counter()
        result = make()
        rows.append((name, time.perf_counter() - start))
        return result

    timed("structure boxes (find_objects)", lambda: labels.boxes)
    timed(
        "NIfTI outputs",
        lambda: write_nifti_outputs(series.volume, labels, model.structures, out),
    )
    ds = timed(
        "RTSTRUCT build",
        lambda: build_rtstruct(labels, series, model.structures, model.name, "0" * 64),
    )
    timed(
        "RTSTRUCT round-trip check",
        lambda: check_rtstruct(ds, labels, series, model.structures),
    )
    timed("RTSTRUCT write", lambda: write_rtstruct(ds, out / out.RTSTRUCT))
    seg = timed(
        "SEG build",
        lambda: build_segmentation(labels, series, model.structures, model.name, "0" * 64),
    )
    timed("SEG write", lambda: write_segmentation(seg, out / out.SEG))
    points = sum(int(c.NumberOfContourPoints) for roi in ds.ROIContourSequence for c in roi.get("ContourSequence", []))
    print(f"{args.model} on {run / run.CT_DICOM}: {points} contour points\n")
    print("| part | time |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
