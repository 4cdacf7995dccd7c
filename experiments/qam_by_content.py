"""What a 2D run's QAM scores: its mean score on the training slices, by what a slice
shows (the brainstem alone, with other structures, or not at all) and by clean or
corrupted labels (docs/noisy-labels.md).

    python experiments/qam_by_content.py NAME     # a finished slices2d run with a QAM, e.g. nl2d-mm-p75-large-qam

Rebuilds the run's training set as the run saw it (same slices, same corruption from the
config's seed), loads ``var/experiments/NAME/qam_best.pt`` and prints one line per group.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.train.experiment import make_trainer  # noqa: E402 (after the path is set)
from engine.train.slices import load_slices  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "openkbp"


def main(name: str) -> None:
    runs = ROOT / "var" / "experiments"
    trainer = make_trainer(ROOT / "experiments" / "configs" / f"{name}.json", DATA, runs)
    trainer.setup()  # the slices, corrupted as in the run (its corruption.json is rewritten the same)
    qam = trainer.modules["qam"]
    qam.load_state_dict(torch.load(trainer.out / "qam_best.pt", map_location="cpu", weights_only=True))
    qam.eval()
    images = torch.as_tensor(trainer.train_set["image"].astype(np.float32))
    masks = torch.as_tensor(trainer.train_set["masks"]).float()
    with torch.no_grad():
        scores = torch.cat(
            [qam(torch.cat([images[i : i + 256], masks[i : i + 256]], 1)) for i in range(0, len(images), 256)]
        ).numpy()
    model = trainer.config["model"]
    clean = load_slices(
        DATA, trainer.training["splits"], model["structures"], model["window_hu"], runs / "cache-slices"
    )
    shows = clean["masks"].any(axis=(2, 3))  # (N, C): structure c on slice n, before corruption
    brainstem = [s["name"] for s in model["structures"]].index("Brainstem")
    others = np.delete(shows, brainstem, axis=1).any(axis=1)
    corrupted = trainer.is_corrupted
    groups = {
        "brainstem alone": shows[:, brainstem] & ~others,
        "brainstem and others": shows[:, brainstem] & others,
        "no brainstem": ~shows[:, brainstem],
    }
    print("| slices | n | mean score, clean | mean score, corrupted |\n|---|---|---|---|")
    for label, group in groups.items():
        print(
            f"| {label} | {int(group.sum())} | {scores[group & ~corrupted].mean():+.2f} "
            f"| {scores[group & corrupted].mean():+.2f} |"
        )
    gone = corrupted & shows[:, brainstem] & ~trainer.train_set["masks"][:, brainstem].any(axis=(1, 2))
    print(
        f"brainstem eroded away on {int(gone.sum())} of {int((corrupted & shows[:, brainstem]).sum())} corrupted slices showing it"
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
