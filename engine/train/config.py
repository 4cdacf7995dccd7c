"""Run configurations: one JSON file per training run (``experiments/configs/NAME.json``).

A configuration has a ``name``, a ``kind`` ("segmentation", the default; "slices2d" for the
2D Pick-and-Learn experiments; "critic2d" for the audit's 2D contour-quality critic,
``engine.train.critic_2d``; "joint"), a ``model`` (a model card's configuration: architecture,
channels, ``full_resolution_channels``, ``deep_supervision``, spacing_mm, window_hu,
axcodes, roi_size, threshold, structures) and ``training``; joint registration runs
also have ``"kind": "joint"`` and ``loss`` (``engine.train.joint``).

Segmentation ``training`` fields (defaults in ``SEGMENTATION_DEFAULTS``, chosen so that
configurations written before a field existed train as they did then):

* steps, patch (voxels per side), batch, cuda_batch (samples per step on a GPU; null:
  batch), lr, val_every, seed, threads, train_cases (keep the first N), autocast
  (CPU only: null for float32, "bfloat16", or "auto": bfloat16 where the CPU has native
  bfloat16 instructions, float32 elsewhere; docs/training.md measures both), evaluate_test (false:
  the run ends without scoring the test split, for paired runs tuned on val);
* splits: the training splits of ``split.json`` (["train"] or ["train", "train_extra"]);
* optimizer: "adamw" (weight decay 1e-5) or "sgd" (Nesterov momentum 0.99, weight decay
  3e-5, as nnU-Net); schedule: "onecycle", "cyclic" (the thesis's "Cycle"), "poly"
  ((1 - step/steps)^0.9, as nnU-Net) or "constant";
* loss: "dice+ce" or "ce"; fg_fraction: share of patches centred on a contoured
  structure; rare_power: structures drawn with weight (max count / count)^rare_power;
* augment: null or {"rotate_deg", "scale", "p_spatial", "p_intensity", "mirror"}
  (``engine.train.augment``);
* focus: null, or the names of the structures a specialist model is trained for: the loss
  counts only those, patches are centred only on them, only the cases that contour one
  of them are used, and checkpoints are chosen by their mean val Dice (the network keeps
  all of ``model.structures``' channels, so it warm-starts from a model with the same ones).
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.errors import InputError


class TrainingConfigError(InputError):
    """A run configuration with a missing or invalid field; the message names it."""


SEGMENTATION_DEFAULTS: dict = {
    "steps": 400,
    "patch": 64,
    "batch": 4,
    "cuda_batch": None,
    "lr": 2e-3,
    "optimizer": "adamw",
    "schedule": "onecycle",
    "loss": "dice+ce",
    "fg_fraction": 0.8,
    "rare_power": 1.0,
    "augment": None,
    "splits": ["train"],
    "val_every": 100,
    "seed": 0,
    "threads": None,
    "train_cases": None,
    "autocast": None,
    "evaluate_test": True,
    "focus": None,
}
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cyclic", "poly", "constant")
LOSSES = ("dice+ce", "ce")
SPLITS = ("train", "train_extra")


def read_run_config(path: str | Path) -> dict:
    """The JSON of a run configuration (segmentation or joint), with "name" and "model".

    Raises:
        TrainingConfigError: unreadable, not JSON, or without "name" or "model".
    """
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise TrainingConfigError(f"{path}: cannot read the run configuration ({exc})") from exc
    if not isinstance(config, dict):
        raise TrainingConfigError(f"{path}: a run configuration is a JSON object")
    for key in ("name", "model"):
        if key not in config:
            raise TrainingConfigError(f"{path}: the run configuration has no {key!r}")
    return config


def _check_choice(training: dict, field: str, choices: tuple) -> None:
    if training[field] not in choices:
        raise TrainingConfigError(f"training.{field} must be one of {choices}, got {training[field]!r}")


def _check_positive_int(section: dict, prefix: str, field: str) -> None:
    value = section.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise TrainingConfigError(f"{prefix}.{field} must be a positive whole number, got {value!r}")


def check_segmentation_config(config: dict) -> dict:
    """Fill in the training defaults of a segmentation run and check every field.

    Raises:
        TrainingConfigError: an unknown or invalid field; the message names it.
    """
    from engine.train.label_noise import RANGES_MM

    if config.get("kind", "segmentation") not in ("segmentation", "slices2d", "critic2d"):
        raise TrainingConfigError(
            f"kind must be 'segmentation', 'slices2d', 'critic2d' or 'joint', got {config['kind']!r}"
        )
    training = config.get("training", {})
    unknown = sorted(set(training) - set(SEGMENTATION_DEFAULTS))
    if unknown:
        raise TrainingConfigError(f"training.{unknown[0]} is not a training field")
    config["training"] = training = {**SEGMENTATION_DEFAULTS, **training}
    for field in ("steps", "patch", "batch", "val_every"):
        _check_positive_int(training, "training", field)
    if training["cuda_batch"] is not None:
        _check_positive_int(training, "training", "cuda_batch")
    if not isinstance(training["lr"], int | float) or training["lr"] <= 0:
        raise TrainingConfigError(f"training.lr must be a positive number, got {training['lr']!r}")
    _check_choice(training, "optimizer", OPTIMIZERS)
    _check_choice(training, "schedule", SCHEDULES)
    _check_choice(training, "loss", LOSSES)
    _check_choice(training, "autocast", (None, "bfloat16", "auto"))
    if not training["splits"] or any(s not in SPLITS for s in training["splits"]):
        raise TrainingConfigError(f"training.splits must be a non-empty list of {SPLITS}, got {training['splits']!r}")
    if not 0 <= training["fg_fraction"] <= 1:
        raise TrainingConfigError(f"training.fg_fraction must be between 0 and 1, got {training['fg_fraction']!r}")
    model = config["model"]
    names = [s["name"] for s in model.get("structures", [])]
    focus = training["focus"]
    if focus is not None and (
        not isinstance(focus, list) or not focus or any(f not in names for f in focus) or len(set(focus)) < len(focus)
    ):
        raise TrainingConfigError(
            f"training.focus must be null or distinct names of model.structures {names}, got {focus!r}"
        )
    divisor = 2 ** (len(model.get("channels", [])) - 1)
    if training["patch"] % divisor:
        raise TrainingConfigError(
            f"training.patch must be a multiple of {divisor} for model.channels "
            f"{model.get('channels')}, got {training['patch']}"
        )
    if training["augment"] is not None:
        from engine.train.augment import check_augment

        check_augment(training["augment"])
    noise = config.get("noise")
    if noise and noise.get("range") not in RANGES_MM:
        raise TrainingConfigError(f"noise.range must be one of {sorted(RANGES_MM)}")
    if noise and noise.get("units", "px") not in ("px", "mm"):
        raise TrainingConfigError('noise.units must be "px" (the thesis\'s pixels) or "mm"')
    qam = config.get("qam")
    if qam and training["batch"] < 2 and not qam.get("corrupt_copies"):
        raise TrainingConfigError("the QAM weights samples within a batch: training.batch must be >= 2")
    copies = sorted(RANGES_MM) + (["both"] if config.get("kind") == "critic2d" else [])
    if qam and qam.get("corrupt_copies", "large") not in copies:
        raise TrainingConfigError(f"qam.corrupt_copies must be one of {copies}")
    if qam and qam.get("teacher", "network") not in ("network", "protocol"):
        raise TrainingConfigError(f"qam.teacher must be 'network' or 'protocol', got {qam['teacher']!r}")
    if config.get("kind") == "critic2d" and not (qam and qam.get("corrupt_copies")):
        raise TrainingConfigError("a critic2d run needs qam.corrupt_copies ('small', 'large' or 'both')")
    return config


def load_segmentation_config(path: str | Path) -> dict:
    """Read a segmentation run configuration and fill in the training defaults.

    Raises:
        TrainingConfigError: see ``read_run_config`` and ``check_segmentation_config``.
    """
    return check_segmentation_config(read_run_config(path))
