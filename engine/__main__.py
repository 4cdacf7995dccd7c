"""Command line: python -m engine segment | evaluate | train | publish.

python -m engine segment INPUT --model hn-oar --out DIR
python -m engine evaluate --model hn-oar --data ../shared/data/openkbp --split test [--json PATH]
python -m engine train --model hn-oar --data ../shared/data/openkbp --out var/train/hn-oar --steps 4000
python -m engine publish --model hn-oar --run var/train/hn-oar --training docs/training/hn-oar.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.io.reader import InputError
from engine.models.registry import UnknownModelError


def _segment(args: argparse.Namespace) -> int:
    from engine.infer.segment import segment_file

    def progress(stage: str, pct: int) -> None:
        print(f"[{pct:3d}%] {stage}", file=sys.stderr, flush=True)

    result = segment_file(args.input, args.model, args.out, progress)
    print(
        json.dumps(
            {
                "out": str(args.out),
                "structures": result.structures,
                "timings_s": result.timings_s,
                "rtstruct": str(result.rtstruct) if result.rtstruct else None,
                "seg": str(result.seg) if result.seg else None,
                "ct_dicom_zip": str(result.ct_dicom_zip)
                if result.ct_dicom_zip
                else None,
            },
            indent=1,
        )
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from engine.evaluate import evaluate, format_table, write_json
    from engine.models.registry import load_model

    result = evaluate(load_model(args.model), Path(args.data), args.split)
    print(format_table(result))
    out = Path(args.json or f"var/evaluate/{args.model}-{args.split}.json")
    write_json(result, out)
    print(f"written {out}")
    if args.card:
        from engine.model_card import add_evaluation

        command = f"python -m engine evaluate --model {args.model} --data {args.data} --split {args.split}"
        add_evaluation(args.model, result, command)
        print(f"recorded in engine/weights/{args.model}.json and .md")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from engine.model_card import publish

    training = json.loads(args.training.read_text())
    print(f"published {publish(args.run, args.model, training)}")
    return 0


def _train(args: argparse.Namespace) -> int:
    import copy

    from engine.models.registry import HN_OAR_CONFIG
    from engine.train.segmentation import train

    configs = {"hn-oar": HN_OAR_CONFIG}
    if args.model not in configs:
        raise UnknownModelError(
            f"no training configuration for {args.model!r}; known: {', '.join(configs)}"
        )
    best = train(
        copy.deepcopy(configs[args.model]),
        Path(args.data),
        Path(args.out),
        steps=args.steps,
        patch=args.patch,
        batch=args.batch,
        lr=args.lr,
        val_every=args.val_every,
        seed=args.seed,
        threads=args.threads,
    )
    print(f"best checkpoint: {best}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine", description="Delineo delineation engine"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="delineate a scan (DICOM folder/zip or NIfTI)")
    p.add_argument("input", type=Path)
    p.add_argument("--model", default="hn-oar")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_segment)

    p = sub.add_parser(
        "evaluate", help="Dice and HD95 per structure on an OpenKBP split"
    )
    p.add_argument("--model", default="hn-oar")
    p.add_argument("--data", type=Path, default=Path("../shared/data/openkbp"))
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument(
        "--json",
        type=Path,
        help="where to write the results (default var/evaluate/MODEL-SPLIT.json)",
    )
    p.add_argument(
        "--card", action="store_true", help="record the results in the model card"
    )
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "publish",
        help="copy a training run's best checkpoint into engine/weights with its card",
    )
    p.add_argument("--model", default="hn-oar")
    p.add_argument("--run", type=Path, default=Path("var/train/hn-oar"))
    p.add_argument(
        "--training",
        type=Path,
        required=True,
        help="JSON: data, split, command, procedure, hardware",
    )
    p.set_defaults(func=_publish)

    p = sub.add_parser("train", help="train a model on OpenKBP (resumable)")
    p.add_argument("--model", default="hn-oar")
    p.add_argument("--data", type=Path, default=Path("../shared/data/openkbp"))
    p.add_argument("--out", type=Path, default=Path("var/train/hn-oar"))
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--patch", type=int, default=96)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--val-every", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_train)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (InputError, UnknownModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
