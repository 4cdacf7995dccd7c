"""One training loop for every network the engine trains, with hooks for what differs.

In the manner of nnU-Net v2's ``nnUNetTrainer.run_training`` (Isensee et al., Nat
Methods 2021): ``Trainer.run_training`` is the loop (seed, device, resume, log,
validation, best/last checkpoint, metrics, curve), and a subclass fills in the hooks
``setup``, ``train_step``, ``validate`` and ``finish`` (``SegmentationTrainer``,
``QAMTrainer``, ``JointTrainer``).

A run can stop at any moment and go on anywhere:

* ``var/experiments/NAME/last.pt`` holds the exact state (float32 network and optimiser,
  scheduler, step, random generators of torch and of every sampler, training hours, the
  log): resuming from it gives the same next step as an uninterrupted run.
* ``experiments/state/NAME.pt`` (``state_root``) holds the same state in at most
  ``MAX_PORTABLE_MB``: the network in float32, the optimiser's moments in bfloat16 (a
  half-precision copy where exactness is not needed) and, when it still fits, the best
  network in bfloat16 (without it, checkpoint selection starts again on the new
  machine). It is written at every checkpoint and is meant to be committed when work
  on the run stops, so the run continues on a fresh machine: resuming takes whichever
  of the two holds the later step.
* SIGINT or SIGTERM ends the current step, writes both, and returns; ``minutes`` bounds
  one piece of a run (a call on a lent GPU machine) the same way.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.hardware import cpu_has_native_bfloat16
from engine.train.config import TrainingConfigError

MAX_PORTABLE_MB = 15.0
CHECKPOINT_EVERY_S = 900.0


def pick_device() -> torch.device:
    """CUDA when a GPU is present, the CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _half(value: Any) -> Any:
    """bfloat16 copies of the floating-point tensors of a nested state (ints kept)."""
    if isinstance(value, torch.Tensor):
        return value.to(torch.bfloat16) if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _half(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_half(v) for v in value)
    return value


def _to_float32(value: Any, like: Any) -> Any:
    """Tensors of ``value`` cast back to the dtype of the same entry in ``like``."""
    if isinstance(value, torch.Tensor) and isinstance(like, torch.Tensor):
        return value.to(like.dtype)
    if isinstance(value, dict) and isinstance(like, dict):
        return {k: _to_float32(v, like.get(k)) for k, v in value.items()}
    if isinstance(value, list | tuple) and isinstance(like, list | tuple):
        return type(value)(_to_float32(v, w) for v, w in zip(value, like, strict=False))
    if isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16:
        return value.float()
    return value


def _atomic_save(obj: Any, path: Path) -> None:
    """torch.save under a temporary name, then rename: a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Trainer:
    """The training loop; subclasses implement the hooks.

    Attributes the hooks set in ``setup``: ``modules`` (name -> ``nn.Module``; "network"
    is the one checkpointed as ``best.pt``), ``optimizers`` (name -> optimiser),
    ``scheduler`` (an ``LRScheduler`` or None), ``samplers`` (objects with an ``rng``
    ``np.random.Generator``, whose state is saved and restored).

    Args:
        config: the run configuration (``name``, ``model``, ``training`` with at least
            ``steps``, ``val_every``, ``seed``; optional ``threads``, ``cuda_batch``,
            ``autocast``: null, "bfloat16" or "auto" (``cpu_has_native_bfloat16``),
            applied on the CPU; CUDA always runs under bfloat16 autocast).
        data: the data root (``../shared/data/openkbp``).
        out_root: where ``NAME/`` is written (``var/experiments``).
        state_root: where the portable ``NAME.pt`` is kept (``experiments/state``), or
            None for none (tests, one-off runs).
        minutes: stop (with a checkpoint) after this much wall-clock time; None for no
            limit.
    """

    def __init__(
        self,
        config: dict,
        data: Path,
        out_root: Path,
        state_root: Path | None = None,
        minutes: float | None = None,
    ) -> None:
        self.config = config
        self.training = config["training"]
        self.name = config["name"]
        self.data = Path(data)
        self.out = Path(out_root) / self.name
        self.portable = Path(state_root) / f"{self.name}.pt" if state_root else None
        self.deadline = time.time() + 60 * minutes if minutes else math.inf
        self.device = pick_device()
        self.seed = int(self.training["seed"])
        self.step, self.best, self.hours = 0, -math.inf, 0.0
        self.log: list[dict] = []
        self.modules: dict[str, torch.nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.samplers: list[Any] = []
        self._stop_signal: int | None = None

    # What ``validate``'s "mean" is (higher is better), for the progress line.
    val_metric = "Dice"

    # -- hooks ---------------------------------------------------------------------
    def setup(self) -> None:
        """Load data, build modules, optimisers, scheduler and samplers."""
        raise NotImplementedError

    def train_step(self) -> Mapping[str, float | None]:
        """One optimisation step; returns the terms to log (at least ``loss``)."""
        raise NotImplementedError

    def validate(self) -> dict:
        """Score the current network on the validation split; ``mean`` selects the best."""
        raise NotImplementedError

    def finish(self) -> dict:
        """After the last step: score ``best.pt`` and return the metrics (``metrics.json``)."""
        raise NotImplementedError

    # -- properties the hooks use ----------------------------------------------------
    @property
    def network(self) -> torch.nn.Module:
        return self.modules["network"]

    @property
    def batch(self) -> int:
        """Samples per step: ``cuda_batch`` on a GPU when the config gives one."""
        if self.device.type == "cuda" and self.training.get("cuda_batch"):
            return int(self.training["cuda_batch"])
        return int(self.training["batch"])

    def autocast(self) -> torch.autocast:
        """bfloat16 autocast on CUDA, and on the CPU when ``training.autocast`` says so."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bfloat16)

    @property
    def cpu_bfloat16(self) -> bool:
        """Whether CPU steps run under bfloat16 autocast (``training.autocast``)."""
        choice = self.training.get("autocast")
        return choice == "bfloat16" or (choice == "auto" and cpu_has_native_bfloat16())

    # -- the loop --------------------------------------------------------------------
    def run_training(self) -> dict | None:
        """Train to ``training.steps`` (resuming if a state exists), then ``finish``.

        Returns the metrics, or None when the run stopped early (signal or ``minutes``)
        with its state saved.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(json.dumps(self.config, indent=1))
        if self.training.get("threads"):
            torch.set_num_threads(int(self.training["threads"]))
        torch.manual_seed(self.seed)
        precision = "bfloat16 autocast" if self.device.type == "cuda" or self.cpu_bfloat16 else "float32"
        print(f"{self.name}: training on {self.device.type} in {precision}", flush=True)
        self.setup()
        for module in self.modules.values():
            module.to(self.device)
        self.resume()
        previous = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            finished = self._loop()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if not finished:
            print(f"{self.name}: stopped at step {self.step}, state saved", flush=True)
            return None
        metrics = self.finish()
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        return metrics

    def _loop(self) -> bool:
        steps, val_every = int(self.training["steps"]), int(self.training["val_every"])
        for module in self.modules.values():
            module.train()
        sums: dict[str, list[float]] = {}
        t_piece = t_log = t_saved = time.time()
        while self.step < steps:
            if self._stop_signal is not None or time.time() > self.deadline:
                self.hours += (time.time() - t_piece) / 3600
                self.save_checkpoint()
                return False
            terms = self.train_step()
            if self.scheduler is not None:
                self.scheduler.step()
            self.step += 1
            for key, value in terms.items():
                if value is not None:
                    sums.setdefault(key, []).append(float(value))
            if self.step % 20 == 0:
                record = {"step": self.step} | {k: float(np.mean(v)) for k, v in sums.items()}
                record["lr"] = self.learning_rate()
                record["s_per_step"] = (time.time() - t_log) / 20
                self.write_log(record)
                sums, t_log = {}, time.time()
            if self.step % val_every == 0 or self.step == steps:
                self.hours += (time.time() - t_piece) / 3600
                t_piece = time.time()
                self._validation()
                self.save_checkpoint()
                t_saved = time.time()
            elif time.time() - t_saved > CHECKPOINT_EVERY_S:
                self.hours += (time.time() - t_piece) / 3600
                t_piece = t_saved = time.time()
                self.save_checkpoint()
        return True

    def _validation(self) -> None:
        for module in self.modules.values():
            module.eval()
        with torch.no_grad():
            val = self.validate()
        for module in self.modules.values():
            module.train()
        self.write_log({"step": self.step, "hours": self.hours, "val": val})
        print(
            f"{self.name} step {self.step} ({self.hours:.2f} h): val mean {self.val_metric} {val['mean']:.3f}",
            flush=True,
        )
        if val["mean"] > self.best:
            self.best = val["mean"]
            self.save_best()

    def save_best(self) -> None:
        """``best.pt``: the state dict of every module ("network" as ``best.pt``, others as ``NAME_best.pt``)."""
        for name, module in self.modules.items():
            path = self.out / ("best.pt" if name == "network" else f"{name}_best.pt")
            _atomic_save(module.state_dict(), path)

    def learning_rate(self) -> float:
        first = next(iter(self.optimizers.values()))
        return float(first.param_groups[0]["lr"])

    def write_log(self, record: dict) -> None:
        self.log.append(record)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None:  # a second signal: stop at once
            raise KeyboardInterrupt
        self._stop_signal = signum
        print(f"{self.name}: stopping after this step", flush=True)

    # -- state -----------------------------------------------------------------------
    def state(self) -> dict:
        """Everything needed to go on exactly: modules, optimisers, scheduler, step,
        best, hours, random generators (torch, CUDA, samplers) and the log."""
        return {
            "step": self.step,
            "best": self.best,
            "hours": self.hours,
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "samplers": [s.rng.bit_generator.state for s in self.samplers],
            },
            "log": self.log,
        }

    def save_checkpoint(self) -> None:
        """``last.pt`` (exact) in the run folder and the portable copy (see the module doc).

        Raises:
            TrainingConfigError: the portable copy would exceed ``MAX_PORTABLE_MB``.
        """
        state = self.state()
        _atomic_save(state, self.out / "last.pt")
        if self.portable is None:
            return
        portable = dict(state)
        portable["optimizers"] = _half(state["optimizers"])
        best = self.out / "best.pt"
        if best.exists():
            with_best = portable | {"best_network": _half(torch.load(best, map_location="cpu", weights_only=True))}
            _atomic_save(with_best, self.portable)
            if self.portable.stat().st_size / 1e6 <= MAX_PORTABLE_MB:
                return
        _atomic_save(portable, self.portable)
        size_mb = self.portable.stat().st_size / 1e6
        if size_mb > MAX_PORTABLE_MB:
            raise TrainingConfigError(
                f"the portable state of {self.name} is {size_mb:.1f} MB, over "
                f"{MAX_PORTABLE_MB} MB: use a smaller network"
            )

    def resume(self) -> None:
        """Load the later of ``last.pt`` and the portable state, if any."""
        candidates = []
        for path in (self.out / "last.pt", self.portable):
            if path is not None and path.exists():
                state = torch.load(path, map_location="cpu", weights_only=False)
                candidates.append((state["step"], path == self.portable, path, state))
        if not candidates:
            return
        # The later step wins; on a tie the exact last.pt (sorted first: False < True).
        step, _, path, state = max(candidates, key=lambda c: (c[0], not c[1]))
        for name, module in self.modules.items():
            module.load_state_dict(_to_float32(state["modules"][name], module.state_dict()))
        for name, opt in self.optimizers.items():
            # load_state_dict casts the bfloat16 moments back to the parameters' dtype.
            opt.load_state_dict(state["optimizers"][name])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        for sampler, rng_state in zip(self.samplers, state["rng"]["samplers"], strict=True):
            sampler.rng.bit_generator.state = rng_state
        self.step, self.best, self.hours = step, state["best"], state["hours"]
        self.log = list(state["log"])
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.log))
        if not (self.out / "best.pt").exists():
            if "best_network" in state:
                network = self.modules["network"]
                _atomic_save(
                    _to_float32(state["best_network"], network.state_dict()),
                    self.out / "best.pt",
                )
            else:  # the best network did not fit the portable state: select anew
                self.best = -math.inf
        print(
            f"{self.name}: resumed at step {step} ({self.hours:.2f} h) from {path}",
            flush=True,
        )
