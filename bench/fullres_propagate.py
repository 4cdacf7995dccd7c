"""`engine propagate` between two clinical-size CTs: per-stage time and peak resident memory.

Makes a planning and a daily 512 x 512 x ~200 DICOM CT from one OpenKBP case
(``bench/fullres.py``'s ``fullres_ct``; the daily grid's centre moved by ``--shift``
mm, so the two grids differ as two sessions' do), delineates the planning CT with
``hn-oar`` (its RTSTRUCT is the planning contours), then runs
``python -m engine propagate`` once per method, each in a fresh process under
``/usr/bin/time -v``: the stage times are the report's own (``timings``), the peak
resident memory is the kernel's (``Maximum resident set size``), measured from outside.

    .venv/bin/python bench/fullres_propagate.py [--case pt_104] [--out var/bench/fullres-propagate]
        [--methods rigid dual-head]

Each method's outputs stay in ``OUT/<method>/``. Prints a Markdown table for
docs/benchmarks.md and writes ``OUT/fullres_propagate.json``.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from fullres import DATA, SPACING_MM, fullres_ct, run_segment

from engine.io.dicom_write import write_ct_series
from engine.io.nifti import read_volume


def run_propagate(daily: Path, planning: Path, contours: Path, method: str, out: Path) -> dict:
    """One ``engine propagate`` process: its timings, wall time (s) and peak RSS (MB)."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "engine", "propagate"]
    command += ["--fixed", str(daily), "--moving", str(planning), "--contours", str(contours)]
    command += ["--model", method, "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"engine propagate --model {method} failed:\n{done.stderr}")
    report = json.loads(done.stdout)
    peak_kb = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)[1]
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    hours, minutes, seconds = (float(g) if g else 0.0 for g in wall.groups())
    return {
        "method": method,
        "timings_s": report["timings"],
        "wall_s": round(3600 * hours + 60 * minutes + seconds, 1),
        "peak_rss_mb": round(int(peak_kb) / 1024),
        "structures": len(report["structures"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="pt_104")
    parser.add_argument("--out", type=Path, default=REPO / "var/bench/fullres-propagate")
    parser.add_argument("--shift", type=float, nargs=3, default=(4.0, -6.0, 10.0), help="RAS mm")
    parser.add_argument("--methods", nargs="*", default=["rigid", "dual-head"])
    args = parser.parse_args()

    ct = read_volume(DATA / "openkbp" / args.case / "ct.nii.gz")
    planning, daily = args.out / "planning_dicom", args.out / "daily_dicom"
    write_ct_series(fullres_ct(ct), planning, description=f"openkbp {args.case} planning")
    write_ct_series(fullres_ct(ct, tuple(args.shift)), daily, description=f"openkbp {args.case} daily")
    del ct
    run_segment(planning, "hn-oar", args.out / "planning-hn-oar")
    contours = args.out / "planning-hn-oar" / "rtstruct.dcm"
    rows = []
    for method in args.methods:
        row = run_propagate(daily, planning, contours, method, args.out / method)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    report = {
        "case": args.case,
        "grid": f"512x512 at {' x '.join(map(str, SPACING_MM))} mm, daily centre moved {list(args.shift)} mm",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "runs": rows,
    }
    (args.out / "fullres_propagate.json").write_text(json.dumps(report, indent=1))

    stages = list(dict.fromkeys(stage for row in rows for stage in row["timings_s"]))
    print(f"openkbp {args.case}, {report['grid']}\n")
    print("| method | " + " | ".join(stages) + " | wall | peak RSS |")
    print("|---" * (len(stages) + 3) + "|")
    for row in rows:
        times = " | ".join(f"{row['timings_s'].get(s, 0.0):.1f} s" for s in stages)
        print(f"| {row['method']} | {times} | {row['wall_s']:.1f} s | {row['peak_rss_mb']} MB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
