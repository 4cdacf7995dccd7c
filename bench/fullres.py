"""`engine segment` on a clinical-size CT: per-stage time and peak resident memory.

Makes a 512 x 512 x ~200 DICOM CT from an OpenKBP case (its CT resampled linearly to
0.977 x 0.977 x 2 mm around the volume's centre, air (-1024 HU) where the case has no
voxel, written with ``engine.io.dicom_write``), then runs
``python -m engine segment`` on it once per shipped segmentation model, each in a fresh
process under ``/usr/bin/time -v``: the stage times are the CLI's own (``timings_s``),
the peak resident memory is the kernel's (``Maximum resident set size``) for that
process, measured from outside it.

    .venv/bin/python bench/fullres.py [--case pt_104] [--out var/bench/fullres]
        [--reference var/bench/fullres-before]

Each model's outputs stay in ``OUT/<model>/``. With ``--reference``, the label map of
each model is compared per structure with the one in ``REFERENCE/<model>/`` (Dice, e.g.
a run of an earlier commit). Prints a Markdown table for docs/benchmarks.md and writes
``OUT/fullres.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.io.dicom_write import write_ct_series
from engine.io.nifti import read_volume
from engine.metrics import dice
from engine.models.registry import available_models
from engine.results import ResultFolder
from engine.volume import Volume

DATA = REPO.parent / "shared" / "data"
SPACING_MM = (0.977, 0.977, 2.0)
IN_PLANE = 512
AIR_HU = -1024.0


def fullres_ct(ct: Volume, shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Volume:
    """``ct`` resampled linearly to ``SPACING_MM`` on a 512 x 512 x K grid (I, J, K)
    with the same axis directions and centre (moved by ``shift_mm``, RAS mm), K
    covering the case's extent along K; air outside the case's field of view."""
    spacing = np.asarray(ct.spacing)
    extent = spacing * np.asarray(ct.array.shape)
    shape = (IN_PLANE, IN_PLANE, int(round(extent[2] / SPACING_MM[2])))
    directions = ct.affine[:3, :3] / spacing
    affine = np.eye(4)
    affine[:3, :3] = directions * np.asarray(SPACING_MM)
    centre_in = ct.affine @ np.append((np.asarray(ct.array.shape) - 1) / 2, 1)
    affine[:3, 3] = centre_in[:3] + np.asarray(shift_mm) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    to_source = np.linalg.inv(ct.affine) @ affine  # new voxel -> source voxel
    array = ndimage.affine_transform(
        ct.array.astype(np.float32),
        to_source[:3, :3],
        offset=to_source[:3, 3],
        output_shape=shape,
        order=1,
        mode="constant",
        cval=AIR_HU,
    )
    return Volume(array, affine)


def run_segment(series_dir: Path, model: str, out: Path) -> dict:
    """One ``engine segment`` process: its timings, wall time and peak RSS (MB)."""
    command = [
        "/usr/bin/time",
        "-v",
        sys.executable,
        "-m",
        "engine",
        "segment",
        str(series_dir),
        "--model",
        model,
        "--out",
        str(out),
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"engine segment --model {model} failed:\n{done.stderr}")
    result = json.loads(done.stdout)
    peak_kb = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)[1]
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    hours, minutes, seconds = (float(g) if g else 0.0 for g in wall.groups())
    return {
        "model": model,
        "timings_s": result["timings_s"],
        "wall_s": round(3600 * hours + 60 * minutes + seconds, 1),
        "peak_rss_mb": round(int(peak_kb) / 1024),
        "rtstruct_roundtrip_dice": result["rtstruct_roundtrip_dice"],
    }


def dice_against(out: Path, reference: Path) -> dict[str, float]:
    """Dice per structure between ``out/labels.nii.gz`` and ``reference``'s."""
    table = ResultFolder(out).read_structures()
    ours = ResultFolder(out).read_labels().array
    theirs = ResultFolder(reference).read_labels().array
    scores = {}
    for s in table:
        scores[s["name"]] = round(dice(ours == s["label"], theirs == s["label"]), 4)
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="pt_104")
    parser.add_argument("--out", type=Path, default=REPO / "var/bench/fullres")
    parser.add_argument("--reference", type=Path)
    parser.add_argument("--models", nargs="*", default=available_models())
    args = parser.parse_args()

    ct = fullres_ct(read_volume(DATA / "openkbp" / args.case / "ct.nii.gz"))
    series_dir = args.out / ResultFolder.CT_DICOM
    write_ct_series(ct, series_dir, description=f"openkbp {args.case} full-res")
    shape = "x".join(str(n) for n in ct.array.shape)
    del ct
    rows = []
    for model in args.models:
        row = run_segment(series_dir, model, args.out / model)
        if args.reference is not None:
            row["dice_vs_reference"] = dice_against(args.out / model, args.reference / model)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    report = {
        "case": args.case,
        "grid": f"{shape} at {' x '.join(map(str, SPACING_MM))} mm",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "runs": rows,
    }
    (args.out / "fullres.json").write_text(json.dumps(report, indent=1))

    print(f"openkbp {args.case}, {report['grid']}\n")
    print(
        "| model | ingest | preprocess | network | export | wall | peak RSS "
        "| min Dice vs reference |\n|---|---|---|---|---|---|---|---|"
    )
    for row in rows:
        t = row["timings_s"]
        dice = row.get("dice_vs_reference")
        worst = f"{min(dice.values()):.4f}" if dice else "-"
        print(
            f"| {row['model']} | {t['ingest']:.1f} s | {t['preprocess']:.1f} s | "
            f"{t['network']:.1f} s | {t['export']:.1f} s | {row['wall_s']:.1f} s | "
            f"{row['peak_rss_mb']} MB | {worst} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
