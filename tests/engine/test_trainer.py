"""The one trainer: a stopped run goes on exactly, from its folder or from the portable
state alone; a short run lowers the loss; bad configurations name the field."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.structure import mirror_order
from engine.train import trainer as trainer_module
from engine.train.augment import PatchAugmenter
from engine.train.config import TrainingConfigError, load_segmentation_config
from engine.train.experiment import make_trainer
from tests.engine.test_experiment_runs import STRUCTURES, _tiny_openkbp

RECIPE = {
    "steps": 6,
    "patch": 16,
    "batch": 2,
    "lr": 1e-2,
    "optimizer": "sgd",
    "schedule": "poly",
    "val_every": 6,
    "augment": {"p_spatial": 0.5, "p_intensity": 0.5},
}


def _config(path: Path, training: dict | None = None, **model) -> Path:
    config = {
        "name": "recipe",
        "model": {
            "architecture": "ResSEUNet",
            "channels": [4, 8, 8],
            "full_resolution_channels": 4,
            "deep_supervision": True,
            "spacing_mm": [4.0, 4.0, 4.0],
            "axcodes": "RAS",
            "window_hu": [-200.0, 1200.0],
            "roi_size": [32, 32, 32],
            "threshold": 0.5,
            "structures": STRUCTURES,
        }
        | model,
        "training": RECIPE | (training or {}),
    }
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _tiny_openkbp(tmp_path_factory.mktemp("openkbp") / "data")


def _stop_after(trainer, step: int) -> None:
    """Send SIGINT to ourselves once ``step`` steps are done, as Ctrl-C would."""
    original = trainer.train_step

    def step_then_signal():
        terms = original()
        if trainer.step + 1 == step:
            os.kill(os.getpid(), signal.SIGINT)
        return terms

    trainer.train_step = step_then_signal


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["modules"]["network"]


def test_a_stopped_run_goes_on_as_if_never_stopped(tmp_path, data):
    config = _config(tmp_path / "recipe.json")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same order of sums in every run
    try:
        whole = make_trainer(config, data, tmp_path / "whole")
        assert whole.run_training() is not None

        stopped = make_trainer(config, data, tmp_path / "pieces", tmp_path / "state")
        _stop_after(stopped, 3)
        assert stopped.run_training() is None  # stopped, state saved
        assert stopped.step == 3 and (tmp_path / "state" / "recipe.pt").exists()
        resumed = make_trainer(config, data, tmp_path / "pieces", tmp_path / "state")
        assert resumed.run_training() is not None
    finally:
        torch.set_num_threads(threads)

    a = _weights(tmp_path / "whole" / "recipe" / "last.pt")
    b = _weights(tmp_path / "pieces" / "recipe" / "last.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_stopped_before_its_first_log_record_stops_cleanly(tmp_path, data):
    from engine.train.experiment import run

    config = _config(tmp_path / "recipe.json")
    assert run(config, data, tmp_path / "runs", tmp_path / "state", minutes=1e-6) is None
    assert (tmp_path / "state" / "recipe.pt").exists()
    assert not (tmp_path / "runs" / "recipe" / "log.jsonl").exists()


def test_the_portable_state_alone_resumes_on_a_fresh_machine(tmp_path, data):
    config = _config(tmp_path / "recipe.json", {"steps": 8, "val_every": 2})
    first = make_trainer(config, data, tmp_path / "machine-a", tmp_path / "state")
    _stop_after(first, 3)
    assert first.run_training() is None
    exact = torch.load(tmp_path / "machine-a" / "recipe" / "last.pt", weights_only=False)

    fresh = make_trainer(config, data, tmp_path / "machine-b", tmp_path / "state")
    fresh.setup()
    fresh.resume()
    assert fresh.step == 3 and fresh.hours == exact["hours"]
    own = fresh.network.state_dict()
    assert all(torch.equal(own[k], exact["modules"]["network"][k]) for k in own)
    # Momentum comes back from bfloat16: close, not equal.
    momentum = fresh.optimizers["network"].state_dict()["state"]
    for i, entry in exact["optimizers"]["network"]["state"].items():
        assert momentum[i]["momentum_buffer"].dtype == torch.float32
        assert torch.allclose(momentum[i]["momentum_buffer"], entry["momentum_buffer"], rtol=1e-2, atol=1e-6)
    assert fresh.scheduler.last_epoch == 3
    assert (tmp_path / "machine-b" / "recipe" / "best.pt").exists()  # restored
    assert [r["step"] for r in fresh.log if "val" in r] == [2]


def test_the_portable_state_has_a_size_limit(tmp_path, data, monkeypatch):
    monkeypatch.setattr(trainer_module, "MAX_PORTABLE_MB", 0.001)
    config = _config(tmp_path / "recipe.json", {"steps": 2, "val_every": 2})
    with pytest.raises(TrainingConfigError, match="portable state"):
        make_trainer(config, data, tmp_path / "runs", tmp_path / "state").run_training()


def test_a_short_run_with_the_full_recipe_lowers_the_loss(tmp_path, data):
    config = _config(
        tmp_path / "recipe.json",
        {"steps": 60, "val_every": 60, "batch": 4, "patch": 32, "lr": 3e-2},
    )
    metrics = make_trainer(config, data, tmp_path / "runs").run_training()
    records = [json.loads(line) for line in (tmp_path / "runs" / "recipe" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < 0.8 * losses[0]
    assert metrics["evaluation"]["n_cases"] == 2 and metrics["hours"] > 0


@pytest.mark.parametrize(
    "training, message",
    [
        ({"optimizer": "adam"}, "training.optimizer"),
        ({"schedule": "weekly"}, "training.schedule"),
        ({"patch": 18}, "training.patch"),
        ({"stepz": 10}, "training.stepz"),
        ({"splits": ["test"]}, "training.splits"),
        ({"augment": {"rotate": 10}}, "training.augment.rotate"),
        ({"augment": {"p_spatial": 2}}, "training.augment.p_spatial"),
        ({"steps": 0}, "training.steps"),
        ({"fg_fraction": 1.5}, "training.fg_fraction"),
        ({"autocast": "float16"}, "training.autocast"),
        ({"focus": ["Parotid"]}, "training.focus"),
        ({"focus": []}, "training.focus"),
    ],
)
def test_bad_configs_name_the_field(tmp_path, training, message):
    with pytest.raises(TrainingConfigError, match=message):
        load_segmentation_config(_config(tmp_path / "bad.json", training))


def test_a_specialist_trains_and_is_chosen_on_its_own_structures(tmp_path, data):
    focus = STRUCTURES[1]["name"]
    config = _config(tmp_path / "recipe.json", {"focus": [focus], "evaluate_test": False})
    trainer = make_trainer(config, data, tmp_path / "runs")
    trainer.run_training()
    assert all(c["available"].tolist() == [False, True] for c in trainer.train_cases)
    trainer.sampler.fg = 1.0  # every patch centred on a structure: only ever the focused one
    assert all(trainer.sampler.sample()[1][1].any() for _ in range(20))
    records = [json.loads(line) for line in (tmp_path / "runs" / "recipe" / "log.jsonl").read_text().splitlines()]
    val = next(r["val"] for r in records if "val" in r)
    assert val["mean"] == val["per_structure"][focus] and "mean_all" in val


def test_an_unreadable_config_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(TrainingConfigError, match="broken.json"):
        load_segmentation_config(path)


def test_mirroring_swaps_left_and_right_structures():
    assert mirror_order(["Brainstem", "Parotid_R", "Parotid_L", "Mandible"]) == [0, 2, 1, 3]
    image = np.zeros((1, 8, 4, 4), np.float32)
    masks = np.zeros((2, 8, 4, 4), np.uint8)
    masks[0, :2] = 1  # Parotid_R in the first two columns along the left-right axis
    image[0, :2] = 1.0
    augmenter = PatchAugmenter({"p_spatial": 0.0, "p_intensity": 0.0, "mirror": True}, ["Parotid_R", "Parotid_L"])
    rng = np.random.default_rng(0)
    flipped = [augmenter(image, masks, rng) for _ in range(20)]
    mirrored = [(i, m) for i, m in flipped if i[0, -1].any()]
    assert 0 < len(mirrored) < 20  # a coin per patch
    for i, m in mirrored:
        # The structure is now on the other side and called Parotid_L.
        assert m[1, -2:].all() and not m[0].any() and i[0, -2:].all()


def test_a_portable_state_without_room_for_the_best_network_selects_anew(tmp_path, data, monkeypatch):
    config = _config(tmp_path / "recipe.json", {"steps": 4, "val_every": 2})
    first = make_trainer(config, data, tmp_path / "machine-a", tmp_path / "state")
    _stop_after(first, 3)
    assert first.run_training() is None
    full = (tmp_path / "state" / "recipe.pt").stat().st_size / 1e6
    # Room for the network and optimiser, not for the best network too.
    monkeypatch.setattr(trainer_module, "MAX_PORTABLE_MB", full * 0.9)
    first.save_checkpoint()
    state = torch.load(tmp_path / "state" / "recipe.pt", weights_only=False)
    assert "best_network" not in state
    fresh = make_trainer(config, data, tmp_path / "machine-b", tmp_path / "state")
    assert fresh.run_training() is not None  # finishes, with a best.pt of its own
    assert (tmp_path / "machine-b" / "recipe" / "best.pt").exists()


def test_a_finished_run_is_published_under_the_model_name_it_serves(tmp_path, data):
    from engine.models.registry import load_model, sha256_of
    from engine.train.publish import publish

    config = _config(tmp_path / "recipe.json", {"steps": 2, "val_every": 2})
    make_trainer(config, data, tmp_path / "runs").run_training()
    weights = tmp_path / "weights"
    training = {k: "tiny" for k in ("data", "split", "command", "procedure", "hardware")}
    publish(tmp_path / "runs" / "recipe", "tiny-organs", training, weights)
    card = json.loads((weights / "tiny-organs.json").read_text())
    assert card["name"] == "tiny-organs" and card["card"]["training"]["run"] == "recipe"
    assert card["card"]["weights_sha256"] == sha256_of(weights / "tiny-organs.pt")
    loaded = load_model("tiny-organs", weights, torch.device("cpu"))
    assert [s.name for s in loaded.structures] == ["PTV70", "Mandible"]
    assert card["card"]["training"]["steps"] == 2 and card["card"]["training"]["hours"] > 0
    assert "Trained 2 steps" in (weights / "tiny-organs.md").read_text()

    # The same network served as a one-structure model gives that structure's logits.
    publish(tmp_path / "runs" / "recipe", "tiny-mandible", training, weights, ["Mandible"])
    mandible = load_model("tiny-mandible", weights, torch.device("cpu"))
    assert [s.name for s in mandible.structures] == ["Mandible"]
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        whole, alone = loaded.network(x), mandible.network(x)
    assert alone.shape[1] == 1
    assert torch.allclose(alone[:, 0], whole[:, 1], atol=1e-5)
    with pytest.raises(ValueError, match="cannot serve Parotid_L"):
        publish(tmp_path / "runs" / "recipe", "bad", training, weights, ["Parotid_L"])


def test_auto_autocast_follows_the_cpus_bfloat16_flags(tmp_path):
    from engine.hardware import cpu_has_native_bfloat16

    with_bf16 = tmp_path / "with"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    without = tmp_path / "without"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2\n")
    assert cpu_has_native_bfloat16(with_bf16)
    assert not cpu_has_native_bfloat16(without)
    assert not cpu_has_native_bfloat16(tmp_path / "missing")
