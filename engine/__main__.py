"""Command line: python -m engine info | segment | contours | audit | propagate | evaluate | calibrate-audit | train | publish.

python -m engine info INPUT
python -m engine segment INPUT --model hn-oar --out DIR [--series KEY]
python -m engine contours RTSTRUCT --reference SERIES --out DIR [--series KEY]
python -m engine audit INPUT [--contours RTSTRUCT] --model hn-rt --out DIR [--series KEY]
python -m engine propagate --fixed DAILY --moving PLANNING --contours RTSTRUCT_OR_DIR --model NAME --out DIR
python -m engine evaluate --model hn-oar --data ../shared/data/openkbp --split test [--json PATH]
python -m engine calibrate-audit --model hn-rt [--seed 1]
python -m engine train --model hn-oar --data ../shared/data/openkbp --out var/train/hn-oar --steps 4000
python -m engine train experiments/configs/joint-cross-stitch.json  (a config run; "kind": "joint" for the joint models)
python -m engine publish --model hn-oar --run var/train/hn-oar --training docs/training/hn-oar.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.errors import ExportError, InputError, ModelError, ToolError
from engine.results import ResultFolder


def _segment(args: argparse.Namespace) -> int:
    from engine.infer.segment import segment_file

    def progress(stage: str, pct: int) -> None:
        print(f"[{pct:3d}%] {stage}", file=sys.stderr, flush=True)

    result = segment_file(args.input, args.model, args.out, progress, series=args.series)
    if result.domain and not result.domain["in_domain"]:
        print("WARNING: " + "; ".join(result.domain["reasons"]), file=sys.stderr)
    print(
        json.dumps(
            {
                "out": str(args.out),
                "structures": result.structures,
                "timings_s": result.timings_s,
                "rtstruct": str(result.rtstruct) if result.rtstruct else None,
                "seg": str(result.seg) if result.seg else None,
                "ct_dicom_zip": str(result.ct_dicom_zip) if result.ct_dicom_zip else None,
                "rtstruct_roundtrip_dice": result.rtstruct_roundtrip,
                "notes": result.notes,
                "domain": result.domain,
            },
            indent=1,
        )
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    from engine.io.preflight import inspect_input

    print(json.dumps(inspect_input(args.input), indent=1))
    return 0


def _contours(args: argparse.Namespace) -> int:
    from engine.io.reader import read_input
    from engine.io.rtstruct_import import import_rtstruct, read_rtstruct
    from engine.io.structure_files import write_roi_masks

    ds = read_rtstruct(args.rtstruct)
    volume, series = read_input(args.reference, args.series)
    if series is None:
        raise InputError(
            f"{args.reference.name}: the reference must be the DICOM image series the "
            "structure set was drawn on, not a NIfTI file"
        )
    entries = write_roi_masks(import_rtstruct(ds, series), volume.affine, args.out)
    for entry in entries:
        for note in entry["notes"]:
            print(f"{entry['name']}: {note}", file=sys.stderr)
    print(json.dumps({"out": str(args.out), "structures": entries}, indent=1))
    return 0


def _audit(args: argparse.Namespace) -> int:
    from engine.infer.audit import audit_file, format_audit

    result = audit_file(args.input, args.model, args.out, contours=args.contours, series=args.series)
    print(format_audit(result))
    print(f"written: {ResultFolder(args.out) / ResultFolder.AUDIT}", file=sys.stderr)
    return 0


def _propagate(args: argparse.Namespace) -> int:
    from engine.infer.propagate import propagate_files

    def progress(stage: str, pct: int) -> None:
        print(f"[{pct:3d}%] {stage}", file=sys.stderr, flush=True)

    report = propagate_files(
        args.fixed,
        args.moving,
        args.contours,
        args.model,
        args.out,
        progress,
        fixed_series=args.fixed_series,
        moving_series=args.moving_series,
    )
    print(json.dumps(report, indent=1))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from engine.models.registry import load_model
    from engine.train.evaluate import evaluate, format_table, write_json

    result = evaluate(load_model(args.model), Path(args.data), args.split)
    print(format_table(result))
    out = Path(args.json or f"var/evaluate/{args.model}-{args.split}.json")
    write_json(result, out)
    print(f"written {out}")
    if args.card:
        from engine.train.publish import add_evaluation

        command = f"python -m engine evaluate --model {args.model} --data {args.data} --split {args.split}"
        add_evaluation(args.model, result, command)
        print(f"recorded in engine/weights/{args.model}.json and .md")
    return 0


def _calibrate_audit(args: argparse.Namespace) -> int:
    from engine.infer.critic import load_critic
    from engine.models.registry import load_model
    from engine.train.audit_calibration import calibrate, checked_contours
    from engine.train.publish import set_audit_calibration

    model = load_model(args.model)
    critic = load_critic(model)
    checked = {
        split: checked_contours(model, critic, Path(args.data), split, args.seed, lambda m: print(m, flush=True))
        for split in ("val", "test")
    }
    calibration = calibrate(checked["val"], checked["test"], model.config["structures"])
    command = f"python -m engine calibrate-audit --model {args.model} --data {args.data} --seed {args.seed}"
    record = {
        "weights_sha256": model.weights_sha256,
        "qam_sha256": critic.weights_sha256,
        "seed": args.seed,
        "command": command,
    } | calibration
    out = Path(args.json or f"var/evaluate/{args.model}-audit.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record | {"per_contour": checked}) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "per_structure"}, indent=1))
    set_audit_calibration(args.model, record)
    print(f"recorded in engine/weights/{args.model}.json and .md; every contour's checks in {out}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from engine.train.publish import attach_critic, publish

    if args.run is not None:
        if args.training is None:
            raise SystemExit("publish --run needs --training (JSON: data, split, command, procedure, hardware)")
        training = json.loads(args.training.read_text())
        print(f"published {publish(args.run, args.model, training, structures=args.structures)}")
    if args.critic is not None:
        print(f"attached {attach_critic(args.model, args.critic)}")
    if args.run is None and args.critic is None:
        raise SystemExit("publish needs --run (a training run), --critic (a critic2d run), or both")
    return 0


def _train(args: argparse.Namespace) -> int:
    from engine.train.experiment import run
    from engine.train.joint import summary_line

    metrics = run(
        args.config,
        Path(args.data),
        Path(args.experiments),
        state_root=None if args.no_state else Path(args.state),
        minutes=args.minutes,
    )
    if metrics is None:
        print("stopped; the same command goes on from the saved state")
        return 0
    if "architecture" in metrics:  # a joint registration run
        print(json.dumps(summary_line(metrics), indent=1))
        return 0
    summary = {k: v for k, v in metrics.items() if k != "evaluation"}
    if "evaluation" in metrics:
        summary["test_mean_dice"] = metrics["evaluation"]["mean_dice"]
    print(json.dumps(summary, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Delineo delineation engine")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "info",
        help="pre-flight report of an input as JSON (series, geometry, refusals)",
    )
    p.add_argument("input", type=Path)
    p.set_defaults(func=_info)

    p = sub.add_parser("segment", help="delineate a scan (DICOM folder/zip or NIfTI)")
    p.add_argument("input", type=Path)
    p.add_argument("--model", default="hn-oar")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--series",
        help="the image series to use when the input holds several (a key from `info`)",
    )
    p.set_defaults(func=_segment)

    p = sub.add_parser(
        "contours",
        help="rasterise an RTSTRUCT onto its DICOM series: one NIfTI mask per ROI",
    )
    p.add_argument("rtstruct", type=Path)
    p.add_argument("--reference", type=Path, required=True, help="the image series")
    p.add_argument("--series", help="the image series within --reference, when it holds several")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_contours)

    p = sub.add_parser(
        "audit",
        help="score a structure set's contours: QAM plausibility, Dice and MSD vs the model",
    )
    p.add_argument("input", type=Path, help="the DICOM series (folder or zip)")
    p.add_argument(
        "--contours",
        type=Path,
        help="the RTSTRUCT (default: the one that came with the input)",
    )
    p.add_argument("--model", default="hn-rt")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--series", help="the image series, when the input holds several")
    p.set_defaults(func=_audit)

    p = sub.add_parser(
        "propagate",
        help="carry planning contours onto a daily scan by registration (see --model)",
    )
    p.add_argument("--fixed", type=Path, required=True, help="the daily scan")
    p.add_argument("--moving", type=Path, required=True, help="the planning scan")
    p.add_argument(
        "--contours",
        type=Path,
        required=True,
        help="RTSTRUCT on the planning series, a segment output folder, or a folder of masks",
    )
    p.add_argument(
        "--model",
        default="elastix-bspline",
        help="rigid, affine, elastix-bspline or a shipped joint model",
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fixed-series", help="the daily image series, when several")
    p.add_argument("--moving-series", help="the planning image series, when several")
    p.set_defaults(func=_propagate)

    p = sub.add_parser("evaluate", help="Dice and HD95 per structure on an OpenKBP split")
    p.add_argument("--model", default="hn-oar")
    p.add_argument("--data", type=Path, default=Path("../shared/data/openkbp"))
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument(
        "--json",
        type=Path,
        help="where to write the results (default var/evaluate/MODEL-SPLIT.json)",
    )
    p.add_argument("--card", action="store_true", help="record the results in the model card")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "calibrate-audit",
        help="measure the contour audit's rule per structure on the val split (test: its figures); record it in the card",
    )
    p.add_argument("--model", default="hn-rt")
    p.add_argument("--data", type=Path, default=Path("../shared/data/openkbp"))
    p.add_argument("--seed", type=int, default=1, help="seed of the distortions of the noise protocol")
    p.add_argument("--json", type=Path, help="every contour's checks (default var/evaluate/MODEL-audit.json)")
    p.set_defaults(func=_calibrate_audit)

    p = sub.add_parser(
        "publish",
        help="copy a training run's best checkpoint into engine/weights with its card",
    )
    p.add_argument("--model", default="hn-oar")
    p.add_argument("--run", type=Path, help="the training run folder, e.g. var/experiments/hn")
    p.add_argument(
        "--training",
        type=Path,
        help="with --run: JSON of data, split, command, procedure, hardware",
    )
    p.add_argument(
        "--critic",
        type=Path,
        help="a critic2d run folder (var/experiments/critic-hn): the model's contour-quality critic",
    )
    p.add_argument(
        "--structures",
        nargs="+",
        help="serve only these of the run's structures (e.g. hn-oar's organs from hn)",
    )
    p.set_defaults(func=_publish)

    p = sub.add_parser(
        "train",
        help="train (or go on with) the run a CONFIG file describes; stops cleanly on Ctrl-C",
    )
    p.add_argument(
        "config",
        type=Path,
        help="a run configuration (JSON; see engine/train/config.py, and engine/train/joint.py "
        'for "kind": "joint"), e.g. experiments/configs/hn-oar.json',
    )
    p.add_argument(
        "--experiments",
        type=Path,
        default=Path("var/experiments"),
        help="where the run writes its folder",
    )
    p.add_argument("--data", type=Path, default=Path("../shared/data/openkbp"))
    p.add_argument(
        "--state",
        type=Path,
        default=Path("experiments/state"),
        help="where the portable resumable state NAME.pt is kept (commit it when you stop)",
    )
    p.add_argument("--no-state", action="store_true", help="keep no portable state")
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="stop (state saved) after this many minutes; the same command goes on",
    )
    p.set_defaults(func=_train)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (InputError, ModelError) as exc:  # the user's input or choice of model
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Our output failed its own check or a tool failed: not the user's input, so not 2.
    except (ExportError, ToolError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
