"""Contour propagation, every method on the same pairs: the table of docs/registration.md.

    python experiments/registration.py run [--methods rigid affine elastix-bspline]
                                           [--inter 2] [--synthetic 3]
    python experiments/registration.py table     # prints the Markdown tables
    python experiments/registration.py docs      # writes them into docs/registration.md

Pairs, all from the OpenKBP test split (never tuned on):

* inter-patient (atlas-style): fixed = test case 2i, moving = test case 2i + 1; truth =
  the fixed case's own contours; no DVF truth;
* synthetic daily scans: fixed = ``engine.train.synthetic_deformation.make_pair`` of a test
  case (seed = pair number, default field parameters), moving = that case; truth = its
  contours warped by the known field, and the field itself.

Per method and pair, through ``engine.infer.propagate.propagate``: Dice, HD95 and mean
surface distance (mm) of each propagated structure against the truth (``engine.metrics``;
structures contoured in both cases only), DVF error (|u - u_true| in mm over the fixed
body, HU > -500: mean and 95th percentile), folding (% of fixed voxels with Jacobian
determinant <= 0), wall and CPU seconds (this process and its children: elastix).
The row ``none`` copies the contours without registration, for reference. Each method's
results go to ``experiments/results/reg-<method>.json`` (committed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.infer.body import BODY_HU
from engine.infer.displacement import Grid, warp_labels
from engine.infer.propagate import propagate
from engine.io.nifti import read_labels, read_volume
from engine.metrics import surface_metrics
from engine.models.registry import model_config
from engine.structure import Structure
from engine.train.openkbp import case_rois, load_split
from engine.train.synthetic_deformation import DEFAULTS, make_pair

DATA = ROOT.parent / "shared" / "data" / "openkbp"
RESULTS = ROOT / "experiments" / "results"
DOC = ROOT / "docs" / "registration.md"
# oar_labelmap.nii.gz values are the hn-oar labels (1 Brainstem ... 7 Mandible).
STRUCTURES = model_config("hn-oar")["structures"]
TABLE_START, TABLE_END = "<!-- reg-table:start -->", "<!-- reg-table:end -->"


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def pairs(n_inter: int, n_synthetic: int) -> list[dict]:
    """The pair descriptions (no arrays): kind, fixed and moving case, seed."""
    test = load_split(DATA, "test")
    out = [{"kind": "inter", "fixed": test[2 * i], "moving": test[2 * i + 1]} for i in range(n_inter)]
    start = 2 * n_inter
    out += [
        {
            "kind": "synthetic",
            "fixed": f"{test[start + i]}+def{i}",
            "moving": test[start + i],
            "seed": i,
        }
        for i in range(n_synthetic)
    ]
    return out


def load_pair(pair: dict):
    """(fixed Volume, moving Volume, moving labels, fixed truth labels, true DDF or None,
    names of the structures contoured in both)."""
    rois = case_rois(DATA)
    moving = read_volume(DATA / pair["moving"] / "ct.nii.gz")
    moving_labels = read_labels(DATA / pair["moving"] / "oar_labelmap.nii.gz")
    present = {s["source"] for s in STRUCTURES} & set(rois[pair["moving"]])
    if pair["kind"] == "inter":
        fixed = read_volume(DATA / pair["fixed"] / "ct.nii.gz")
        truth = read_labels(DATA / pair["fixed"] / "oar_labelmap.nii.gz")
        present &= set(rois[pair["fixed"]])
        true_ddf = None
    else:
        values = [s["label"] for s in STRUCTURES]
        synthetic = make_pair(moving, moving_labels, values, seed=pair["seed"])
        fixed, truth, true_ddf = (
            synthetic.daily,
            synthetic.daily_labels,
            synthetic.ddf_mm,
        )
        pair["field"] = synthetic.params
    names = [s["name"] for s in STRUCTURES if s["source"] in present]
    return fixed, moving, moving_labels, truth, true_ddf, names


def _score(labels, truth, fixed, names) -> dict:
    scores = {}
    for s in STRUCTURES:
        if s["name"] not in names:
            continue
        dice, msd, hd95 = surface_metrics(labels == s["label"], truth.array == s["label"], fixed.spacing)
        scores[s["name"]] = {"dice": round(dice, 4), "msd_mm": msd, "hd95_mm": hd95}
    return scores


def run_method(method: str, pair_list: list[dict]) -> dict:
    rows = []
    for pair in pair_list:
        fixed, moving, moving_labels, truth, true_ddf, names = load_pair(pair)
        structures = [Structure.from_dict(s) for s in STRUCTURES if s["name"] in names]
        wall, cpu = time.perf_counter(), _cpu_seconds()
        if method == "none":
            zero = np.zeros((*fixed.array.shape, 3), np.float32)
            grid = Grid(fixed.array.shape, fixed.affine)
            labels = warp_labels(moving_labels, [s.label for s in structures], grid, zero)
            ddf, folding = zero, 0.0
        else:
            result = propagate(fixed, moving, moving_labels, structures, method)
            labels, ddf = result.labels.array, result.field.to_array()
            folding = result.folding["folding_percent"]
        row = {
            **{k: v for k, v in pair.items()},
            "wall_s": round(time.perf_counter() - wall, 1),
            "cpu_s": round(_cpu_seconds() - cpu, 1),
            "folding_percent": folding,
            "structures": _score(labels, truth, fixed, names),
        }
        if true_ddf is not None:
            body = fixed.array > BODY_HU
            error = np.linalg.norm(ddf - true_ddf, axis=-1)[body]
            initial = np.linalg.norm(true_ddf, axis=-1)[body]
            row["dvf_error_mm"] = {
                "mean": round(float(error.mean()), 2),
                "p95": round(float(np.percentile(error, 95)), 2),
                "true_mean": round(float(initial.mean()), 2),
            }
        dice = [v["dice"] for v in row["structures"].values()]
        print(
            f"{method:16s} {pair['kind']:9s} {pair['fixed']:>12s} <- {pair['moving']:<7s} "
            f"Dice {np.mean(dice):.3f}  {row['wall_s']:6.1f} s  folding {folding:.3f} %"
            + (f"  DVF error {row['dvf_error_mm']['mean']} mm" if "dvf_error_mm" in row else ""),
            flush=True,
        )
        rows.append(row)
    return {
        "method": method,
        "command": f"python experiments/registration.py run --methods {method} "
        f"--inter {sum(p['kind'] == 'inter' for p in pair_list)} "
        f"--synthetic {sum(p['kind'] == 'synthetic' for p in pair_list)}",
        "synthetic_field": DEFAULTS,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), {platform.python_version()}",
        "pairs": rows,
    }


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 3) if values else None


def _fmt(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table() -> str:
    results = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("reg-*.json"))]
    order = {"none": 0, "rigid": 1, "affine": 2, "elastix-bspline": 3}
    results.sort(key=lambda r: (order.get(r["method"], 9), r["method"]))
    lines = [
        "| method | pairs | Dice | HD95 mm | MSD mm | DVF error mm (mean / p95) | folding % | s per pair (wall / CPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for kind in ("inter", "synthetic"):
            rows = [p for p in r["pairs"] if p["kind"] == kind]
            if not rows:
                continue
            scores = [s for p in rows for s in p["structures"].values()]
            dvf = [p["dvf_error_mm"] for p in rows if "dvf_error_mm" in p]
            dvf_text = f"{_mean(d['mean'] for d in dvf):.2f} / {_mean(d['p95'] for d in dvf):.2f}" if dvf else "-"
            lines.append(
                f"| {r['method']} | {len(rows)} {kind} | "
                f"{_fmt(_mean(s['dice'] for s in scores), 3)} | "
                f"{_fmt(_mean(s['hd95_mm'] for s in scores))} | "
                f"{_fmt(_mean(s['msd_mm'] for s in scores))} | {dvf_text} | "
                f"{_fmt(_mean(p['folding_percent'] for p in rows), 3)} | "
                f"{_fmt(_mean(p['wall_s'] for p in rows), 0)} / "
                f"{_fmt(_mean(p['cpu_s'] for p in rows), 0)} |"
            )
    names = [s["name"] for s in STRUCTURES]
    lines += [
        "",
        "Dice per structure (mean over the pairs that have it; inter-patient / synthetic):",
        "",
        "| method | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for r in results:
        cells = []
        for name in names:
            parts = []
            for kind in ("inter", "synthetic"):
                d = [p["structures"][name]["dice"] for p in r["pairs"] if p["kind"] == kind and name in p["structures"]]
                parts.append(_fmt(_mean(d), 2))
            cells.append(" / ".join(parts))
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_docs() -> None:
    text = DOC.read_text()
    start, end = text.index(TABLE_START), text.index(TABLE_END)
    DOC.write_text(text[: start + len(TABLE_START)] + "\n" + table() + "\n" + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("--methods", nargs="+", default=["none", "rigid", "affine", "elastix-bspline"])
    p.add_argument("--inter", type=int, default=2)
    p.add_argument("--synthetic", type=int, default=3)
    sub.add_parser("table")
    sub.add_parser("docs")
    args = parser.parse_args()
    if args.command == "run":
        pair_list = pairs(args.inter, args.synthetic)
        RESULTS.mkdir(parents=True, exist_ok=True)
        for method in args.methods:
            result = run_method(method, pair_list)
            path = RESULTS / f"reg-{method}.json"
            path.write_text(json.dumps(result, indent=1, allow_nan=False))
            print(f"written {path}", flush=True)
    elif args.command == "table":
        print(table())
    else:
        write_docs()
        print(f"written {DOC}")


if __name__ == "__main__":
    main()
