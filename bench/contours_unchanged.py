"""Do the contours change? ``engine segment`` on the openkbp DICOM cases, compared per
structure with an earlier run (e.g. of the commit before an export change).

Runs ``python -m engine segment`` (this checkout's engine) on each case of
``shared/data/openkbp_dicom`` for each shipped segmentation model into
``OUT/<case>/<model>/``. With ``--reference REF`` (the ``OUT`` of an earlier run) it
compares, per structure, the label maps (``labels.nii.gz``) and the RTSTRUCTs as a
planning system reads them (``rtstruct.dcm`` rasterised on the case's series by
``engine.io.rtstruct_import``), as Dice, and prints the lowest of each per case and model.

    .venv/bin/python bench/contours_unchanged.py --out var/bench/contours
        [--reference var/bench/contours-before]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.io.dicom_series import read_series  # noqa: E402
from engine.io.rtstruct_import import import_rtstruct  # noqa: E402
from engine.metrics import dice  # noqa: E402
from engine.models.registry import available_models  # noqa: E402
from engine.results import ResultFolder  # noqa: E402

CASES = REPO.parent / "shared" / "data" / "openkbp_dicom"


def compare(ours: Path, theirs: Path, series) -> dict[str, dict[str, float]]:
    """Per structure: Dice of the label maps and of the RTSTRUCTs read back."""
    table = ResultFolder(ours).read_structures()
    a, b = (ResultFolder(d).read_labels().array for d in (ours, theirs))
    rois = [
        {roi.name: roi.mask for roi in import_rtstruct(ResultFolder(d) / ResultFolder.RTSTRUCT, series)}
        for d in (ours, theirs)
    ]
    return {
        s["name"]: {
            "labels": round(dice(a == s["label"], b == s["label"]), 4),
            "rtstruct": round(dice(rois[0][s["name"]], rois[1][s["name"]]), 4),
        }
        for s in table
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "var/bench/contours")
    parser.add_argument("--reference", type=Path)
    parser.add_argument("--models", nargs="*", default=available_models())
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    rows = []
    for case in sorted(p for p in CASES.iterdir() if p.is_dir()):
        series = read_series(case) if args.reference else None
        for model in args.models:
            out = args.out / case.name / model
            command = [sys.executable, "-m", "engine", "segment", str(case)]
            command += ["--model", model, "--out", str(out)]
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise RuntimeError(f"{case.name} {model} failed:\n{done.stderr}")
            if args.reference is not None:
                scores = compare(out, args.reference / case.name / model, series)
                rows.append((case.name, model, scores))
                print(
                    json.dumps({"case": case.name, "model": model, **scores}),
                    flush=True,
                )
    if rows:
        print("\n| case | model | min Dice, labels | min Dice, RTSTRUCT read back |")
        print("|---|---|---|---|")
        for case, model, scores in rows:
            low_labels = min(s["labels"] for s in scores.values())
            low_rtstruct = min(s["rtstruct"] for s in scores.values())
            print(f"| {case} | {model} | {low_labels:.4f} | {low_rtstruct:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
