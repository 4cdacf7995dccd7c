"""Faster inference, same contours? A shipped model's val Dice and time per inference setting.

    python experiments/inference_settings.py MODEL [--settings NAME ...] [--write-card]
        [--data ../shared/data/openkbp]

Two ways to spend less on the network, each against the card's setting (128^3 windows,
float32, test-time mirroring as the card chose it):

* bfloat16 autocast for the forward passes (``engine.infer.predict.inference_bfloat16``),
  about twice as fast on a CPU with AVX512-BF16 or AMX-BF16;
* fewer windows. A planning CT of the head and neck on the 3.5 x 3.5 x 2.5 mm model grid
  is about 143 x 143 x 130-160 voxels, so 128^3 windows at 25 % overlap
  (``engine.infer.predict``) take 8 network passes, 16 with test-time mirroring, over
  about five times the voxels of the CT. The network is fully convolutional: one window
  of 144 x 144 x 160 covers such a CT whole;
* the network only in the box around the body (``engine.infer.body``): the air and the
  couch around the patient take a half or more of the grid.

Evaluates MODEL on the val split (``engine.train.evaluate``: Dice on each CT's own grid,
where the structure is contoured; the test split is not looked at) for each setting below
and writes ``experiments/results/inference-MODEL.json`` with the per-structure Dice, the
mean and the seconds the split took (network, post-processing and scoring, on the machine
named there, not always idle). The float32 128^3-window figures are those of
``experiments/test_time_mirror.py`` for the same weights where it has run.
``--write-card`` stores in the card whether bfloat16 is allowed and whether the network
runs in the body's box, each where the val mean Dice stays within ``TOLERANCE``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.infer.predict import inference_bfloat16  # noqa: E402 (after the path is set)
from engine.models.registry import load_model  # noqa: E402
from engine.train.evaluate import evaluate  # noqa: E402


def machine() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.partition(':')[2].strip()}, {torch.get_num_threads()} threads"
    return platform.processor()


# name -> (roi_size, test-time mirroring, bfloat16, crop to the body)
SETTINGS = {
    "128-windows": ([128, 128, 128], False, False, False),
    "128-windows-mirrored": ([128, 128, 128], True, False, False),
    "one-window": ([144, 144, 160], False, False, False),
    "bfloat16": ([128, 128, 128], False, True, False),
    "bfloat16-mirrored": ([128, 128, 128], True, True, False),
    "body-bfloat16": ([128, 128, 128], False, True, True),
    "body-bfloat16-mirrored": ([128, 128, 128], True, True, True),
    "body-160-bfloat16-mirrored": ([128, 128, 160], True, True, True),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "openkbp"))
    parser.add_argument(
        "--settings",
        nargs="*",
        choices=list(SETTINGS),
        help="default: all; with --write-card, the bfloat16 ones of the card's mirroring",
    )
    parser.add_argument("--write-card", action="store_true")
    args = parser.parse_args()
    model = load_model(args.model)
    mirrored = bool(model.config.get("test_time_mirror"))
    out = ROOT / "experiments" / "results" / f"inference-{args.model}.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    if results.get("weights_sha256") != model.weights_sha256:
        results = {"weights_sha256": model.weights_sha256, "split": "val", "settings": {}}
    if args.settings is None:
        suffix = "-mirrored" if mirrored else ""
        args.settings = [f"bfloat16{suffix}", f"body-bfloat16{suffix}"] if args.write_card else list(SETTINGS)
    for name in args.settings:
        roi_size, mirror, bfloat16, crop = SETTINGS[name]
        if bfloat16 and not inference_bfloat16({"inference_bfloat16": True}, model.device):
            if args.write_card:  # a card stays float32 until a machine that can has measured it
                print(f"{name}: this machine does not compute in bfloat16 natively; the card is unchanged")
                return 0
            sys.exit(f"{name}: this machine does not compute in bfloat16 natively (or DELINEO_INFERENCE_FLOAT32=1)")
        model.config.update(roi_size=roi_size, test_time_mirror=mirror, inference_bfloat16=bfloat16, crop_to_body=crop)
        r = evaluate(model, Path(args.data), "val")
        results["settings"][name] = {
            "roi_size": roi_size,
            "test_time_mirror": mirror,
            "inference_bfloat16": bfloat16,
            "crop_to_body": crop,
            "machine": machine(),
            "mean_dice": r["mean_dice"],
            "per_structure": {k: v["dice_mean"] for k, v in r["per_structure"].items()},
            "seconds": r["seconds"],
            "command": f"python experiments/inference_settings.py {args.model} --settings {name}",
        }
        out.write_text(json.dumps(results, indent=1) + "\n")
    done = results["settings"]
    names = list(next(iter(done.values()))["per_structure"]) if done else []
    print("| setting | " + " | ".join(names) + " | mean | seconds |")
    print("|" + "---|" * (len(names) + 3))
    for name, s in done.items():
        cells = [f"{s['per_structure'][n]:.3f}" for n in names]
        print(f"| {name} | " + " | ".join(cells) + f" | **{s['mean_dice']:.3f}** | {s['seconds']} |")
    if args.write_card:
        write_card(args.model, model.weights_sha256, done, mirrored)
    return 0


# bfloat16 rounds each activation to 8 bits of mantissa, and the body's box changes where
# the windows fall: the label maps differ by a few boundary voxels. Each is used where the
# val mean Dice stays within this, a third of what adjacent checkpoints of the long run
# differ by.
TOLERANCE = 0.005


def from_mirroring_results(model: str, sha256: str) -> dict:
    """The two float32 128^3-window settings as ``experiments/test_time_mirror.py`` measured
    them for the same weights (experiments/results/tta-MODEL.json): the same evaluation,
    deterministic in float32, so not run again; {} when that file is of other weights."""
    path = ROOT / "experiments" / "results" / f"tta-{model}.json"
    if not path.exists():
        return {}
    tta = json.loads(path.read_text())
    if tta["weights_sha256"] != sha256:
        return {}
    settings = {}
    for name, index in (("128-windows", 0), ("128-windows-mirrored", 1)):
        settings[name] = {
            "mean_dice": tta["mean_dice_on" if index else "mean_dice_off"],
            "per_structure": {k: v[index] for k, v in tta["per_structure"].items()},
            "command": tta["command"],
        }
    return settings


def write_card(model: str, sha256: str, done: dict, mirrored: bool) -> None:
    """Store the bfloat16 choice (against float32) and the body-crop choice (against the
    whole grid, both in bfloat16) in the card, for the card's own mirroring setting."""
    from engine.train.publish import set_crop_to_body, set_inference_bfloat16

    suffix = "-mirrored" if mirrored else ""
    names = [f"128-windows{suffix}", f"bfloat16{suffix}", f"body-bfloat16{suffix}"]
    done = from_mirroring_results(model, sha256) | done
    missing = [n for n in names if n not in done]
    if missing:
        sys.exit(f"--write-card needs the settings {', '.join(missing)} (run them with --settings)")
    fp, bf, body = (done[n] for n in names)
    command = f"python experiments/inference_settings.py {model} --settings {' '.join(names)} --write-card"
    bfloat16 = bf["mean_dice"] >= fp["mean_dice"] - TOLERANCE
    set_inference_bfloat16(
        model,
        {
            "on": bfloat16,
            "weights_sha256": sha256,
            "split": "val",
            "mean_dice_float32": fp["mean_dice"],
            "mean_dice_bfloat16": bf["mean_dice"],
            "command": command,
        },
    )
    crop = body["mean_dice"] >= bf["mean_dice"] - TOLERANCE
    set_crop_to_body(
        model,
        {
            "on": crop,
            "weights_sha256": sha256,
            "split": "val",
            "mean_dice_whole": bf["mean_dice"],
            "mean_dice_body": body["mean_dice"],
            "command": command,
        },
    )
    print(f"card: inference_bfloat16 {'on' if bfloat16 else 'off'}, crop_to_body {'on' if crop else 'off'}")


if __name__ == "__main__":
    raise SystemExit(main())
