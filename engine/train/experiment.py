"""Training runs from a config file: ``python -m engine train CONFIG``.

One JSON file describes a run (``experiments/configs/NAME.json``; fields in
``engine.train.config`` and, for joint registration runs, ``engine.train.joint``).
The trainer is chosen from it: ``JointTrainer`` for ``"kind": "joint"``, ``SliceTrainer``
for ``"kind": "slices2d"`` (Pick-and-Learn on 2D slices, ``engine.train.pick_and_learn_2d``),
``CriticTrainer`` for ``"kind": "critic2d"`` (the audit's 2D critic, ``engine.train.critic_2d``),
``QAMTrainer`` when a 3D run has ``noise`` or ``qam`` (Pick-and-Learn,
docs/noisy-labels.md), ``SegmentationTrainer`` otherwise.

The run directory ``var/experiments/NAME`` gets ``config.json`` (as run), ``log.jsonl``
(loss, learning rate, QAM weights where used, validation Dice with hours of training),
``best.pt`` (and ``qam_best.pt``), ``last.pt`` (exact resumable state), ``metrics.json``
(test-split figures of the best checkpoint) and ``curve.png`` / ``curve.html``. With
``state_root`` the portable state ``experiments/state/NAME.pt`` is kept as well
(``engine.train.trainer``): commit it when work on the run stops.
"""

from __future__ import annotations

from pathlib import Path

from engine.train.config import load_segmentation_config
from engine.train.curve import write_curve
from engine.train.trainer import Trainer


def make_trainer(
    config_path: str | Path,
    data: Path,
    out_root: Path = Path("var/experiments"),
    state_root: Path | None = None,
    minutes: float | None = None,
) -> Trainer:
    """The trainer of the run a config file describes.

    Raises:
        TrainingConfigError: unreadable, or a missing or invalid field (named).
    """
    from engine.train.joint import JointTrainer, is_joint_config, load_joint_config

    if is_joint_config(config_path):
        return JointTrainer(load_joint_config(config_path), data, out_root, state_root, minutes)
    config = load_segmentation_config(config_path)
    if config.get("kind") == "critic2d":
        from engine.train.critic_2d import CriticTrainer

        return CriticTrainer(config, data, out_root, state_root, minutes)
    if config.get("kind") == "slices2d":
        from engine.train.pick_and_learn_2d import SliceTrainer

        return SliceTrainer(config, data, out_root, state_root, minutes)
    if config.get("noise") or config.get("qam"):
        from engine.train.pick_and_learn import QAMTrainer

        return QAMTrainer(config, data, out_root, state_root, minutes)
    from engine.train.segmentation import SegmentationTrainer

    return SegmentationTrainer(config, data, out_root, state_root, minutes)


def run(
    config_path: str | Path,
    data: Path,
    out_root: Path = Path("var/experiments"),
    state_root: Path | None = None,
    minutes: float | None = None,
) -> dict | None:
    """Train (or go on with) the run a config file describes; when it reaches its last
    step, score its best checkpoint on the test split.

    Returns the metrics (also in ``metrics.json``), or None when the run stopped early
    (signal or ``minutes``) with its state saved.

    Raises:
        TrainingConfigError: see ``make_trainer``.
    """
    trainer = make_trainer(config_path, data, out_root, state_root, minutes)
    metrics = trainer.run_training()
    # After metrics.json: a missing Chromium for kaleido loses no result. A run stopped
    # before its first 20 steps has no log yet.
    if (trainer.out / "log.jsonl").exists():
        write_curve(trainer.out)
    return metrics
