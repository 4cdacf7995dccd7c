"""Publishing a run as a shipped model: what a re-publish keeps (the domain), and the
test-time mirroring choice recorded with the val figures that made it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.models.registry import build_network, load_model, model_config, sha256_of
from engine.train.publish import (
    add_domain,
    publish,
    set_crop_to_body,
    set_inference_bfloat16,
    set_test_time_mirror,
)

TRAINING = {k: "tiny" for k in ("data", "split", "command", "procedure", "hardware")}


def _tiny_run(tmp_path: Path) -> Path:
    """A run folder of hn-oar's configuration with a tiny network (untrained)."""
    config = {
        k: v
        for k, v in model_config("hn-oar").items()
        if k not in ("domain", "qam")  # the inference choices stay: publish drops them
    }
    config = {**config, "channels": [4, 8, 8, 8, 8]}
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config))
    (run / "log.jsonl").write_text("")
    torch.save(build_network(config).state_dict(), run / "best.pt")
    return run


def test_publish_keeps_the_domain_of_the_card_it_replaces(tmp_path):
    run, weights = _tiny_run(tmp_path), tmp_path / "weights"
    publish(run, "tiny", TRAINING, weights)
    domain = model_config("hn-oar")["domain"]
    add_domain("tiny", domain, weights)
    publish(run, "tiny", TRAINING, weights)  # a new run under the same name
    card = json.loads((weights / "tiny.json").read_text())
    assert card["domain"] == domain
    assert card["card"]["weights_sha256"] == sha256_of(weights / "tiny.pt")
    assert "## Domain" in (weights / "tiny.md").read_text()


# key -> (setter, the figures of a choice besides on/sha/split, what the card's Markdown says)
CHOICES = {
    "test_time_mirror": (
        set_test_time_mirror,
        {
            "mean_dice_off": 0.61,
            "mean_dice_on": 0.63,
            "per_structure": {"Brainstem": [0.7, 0.72]},
            "command": "python experiments/test_time_mirror.py tiny --write-card",
        },
        "Test-time mirroring (left-right, parotids swapped back): on",
    ),
    "inference_bfloat16": (
        set_inference_bfloat16,
        {
            "mean_dice_float32": 0.587,
            "mean_dice_bfloat16": 0.586,
            "command": "python experiments/inference_settings.py tiny --settings 128-windows bfloat16 --write-card",
        },
        "bfloat16 inference",
    ),
    "crop_to_body": (
        set_crop_to_body,
        {
            "mean_dice_whole": 0.700,
            "mean_dice_body": 0.696,
            "command": "python experiments/inference_settings.py tiny --write-card",
        },
        "box around the body (HU > -500, 20 mm margin): on",
    ),
}


@pytest.mark.parametrize("key", list(CHOICES))
def test_an_inference_choice_is_stored_for_these_weights_only(tmp_path, key):
    setter, figures, markdown = CHOICES[key]
    run, weights = _tiny_run(tmp_path), tmp_path / "weights"
    publish(run, "tiny", TRAINING, weights)
    assert not load_model("tiny", weights).config.get(key)
    choice = {"on": True, "weights_sha256": sha256_of(weights / "tiny.pt"), "split": "val", **figures}
    setter("tiny", choice, weights)
    assert load_model("tiny", weights).config[key] is True
    assert markdown in (weights / "tiny.md").read_text()
    with pytest.raises(ValueError, match="other weights"):
        setter("tiny", {**choice, "weights_sha256": "0" * 64}, weights)
    publish(run, "tiny", TRAINING, weights)  # new weights: measured again before it is on
    assert not load_model("tiny", weights).config.get(key)
    choice = {
        "on": True,
        "weights_sha256": sha256_of(weights / "tiny.pt"),
        "split": "val",
        "mean_dice_whole": 0.700,
        "mean_dice_body": 0.696,
        "command": "python experiments/inference_settings.py tiny --write-card",
    }
    set_crop_to_body("tiny", choice, weights)
    assert load_model("tiny", weights).config["crop_to_body"] is True
    assert "box around the body (HU > -500, 20 mm margin): on" in (weights / "tiny.md").read_text()
    with pytest.raises(ValueError, match="other weights"):
        set_crop_to_body("tiny", {**choice, "weights_sha256": "0" * 64}, weights)
    publish(run, "tiny", TRAINING, weights)  # new weights: measured again before it is on
    assert not load_model("tiny", weights).config.get("crop_to_body")
