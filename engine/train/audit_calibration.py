"""Calibration of the contour audit (``engine.infer.audit``): each structure's rule
(``engine.models.card.AuditRule``), measured through the audit's own pipeline.

``python -m engine calibrate-audit --model hn-rt [--seed 1]`` (about 11 minutes on 2 cores shared with a 2D run, 2026-12-08)

For every contoured structure of the OpenKBP val and test cases, the contour is checked
as the audit checks a physician's: the model runs once on the case's CT
(``engine.infer.audit.model_view``), the critic scores the contour resampled onto the
model grid (``critic_score``), and its Dice with the model's delineation of the structure
(``ModelView.delineation``) is taken on the CT's own grid. Each contour is checked clean and once dilated or eroded by each range of
the 3D noise protocol (``engine.train.critic_2d.score_contours``: 2-8 and 5-13 mm on the
CT's spacing, drawn with ``seed``), so both checks see the same distorted contours.

Per structure, from its clean *val* contours: the mean and standard deviation of each
check, which standardise it (a parotid's and a PTV's scores then sit on one scale); the
combined score, the mean of the two standardised checks; the threshold under which
``CLEAN_FLAGGED`` of the clean val contours fall; and the combined check's val ROC AUC,
which decides whether the audit acts on it. Reported on test: ROC AUC per structure, over
all contours and over the organs, for the combined check and each check alone, and the
shares of clean and distorted contours the threshold calls implausible.
(``experiments/audit_auc.py`` made the same comparison on the model grid first:
docs/noisy-labels.md, "The audit's two checks together".)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.infer.audit import critic_score, model_view
from engine.infer.critic import Critic
from engine.metrics import dice
from engine.models.registry import LoadedModel
from engine.train.critic_2d import CLEAN_FLAGGED, at_threshold, clean_percentile_threshold, roc_auc, score_contours
from engine.train.label_noise import RANGES_MM
from engine.train.openkbp import load_case, load_split

Progress = Callable[[str], None]
SCORES = ("clean", *RANGES_MM)


def viewed_cases(model: LoadedModel, data: Path, split: str, progress: Progress | None = None) -> list[dict[str, Any]]:
    """The cases of ``split`` that contour one of the model's structures, as
    ``score_contours`` takes them (on the CT's grid, with its ``spacing_mm``), each with its
    ``volume`` and the model's ``view`` of it (``engine.infer.audit.model_view``: the
    network runs once per case)."""
    cfg = model.config
    cases: list[dict[str, Any]] = []
    for case_id in load_split(data, split):
        volume, masks, available = load_case(data, case_id, cfg["structures"])
        if not available.any():
            continue
        cases.append(
            {
                "case": case_id,
                "image": volume.array,
                "masks": masks,
                "available": available,
                "spacing_mm": list(volume.spacing),
                "volume": volume,
                "view": model_view(volume, model),
            }
        )
        if progress:
            progress(f"{split}: {len(cases)} cases delineated")
    return cases


def checked_contours(
    model: LoadedModel, critic: Critic, data: Path, split: str, seed: int, progress: Progress | None = None
) -> dict[str, list[dict]]:
    """Both checks of every contoured structure of ``split``'s cases, clean and distorted.

    Returns {"qam": rows, "dice": rows}, rows as ``score_contours`` gives them ({"case",
    "structure" (index), "clean", "small", "large"}; None where erosion left nothing on the
    model grid), the same contours in the same order in both.
    """
    cfg = model.config
    cases = viewed_cases(model, data, split, progress)

    def both(k: int, image: np.ndarray, mask: np.ndarray, c: int) -> tuple[float, float] | None:
        view = cases[k]["view"]
        score = critic_score(view, cases[k]["volume"], mask, c, model, critic)
        if score is None:
            return None
        return score, dice(mask > 0, view.delineation(c))

    rows = score_contours(both, cases, cfg["spacing_mm"], seed)
    return {
        check: [r | {k: None if r[k] is None else float(r[k][i]) for k in SCORES} for r in rows]
        for i, check in enumerate(("qam", "dice"))
    }


def clean_stats(rows: list[dict]) -> dict[int, tuple[float, float]]:
    """Per structure index: (mean, standard deviation) of its clean scores in ``rows``."""
    stats = {}
    for c in sorted({r["structure"] for r in rows}):
        clean = np.array([r["clean"] for r in rows if r["structure"] == c])
        stats[c] = (float(clean.mean()), max(float(clean.std()), 1e-6))
    return stats


def standardise(rows: list[dict], stats: dict[int, tuple[float, float]]) -> list[dict]:
    """``rows`` with each score as (score - mean) / sd of its structure (``clean_stats``);
    rows of a structure without statistics are left out."""
    out = []
    for r in rows:
        if r["structure"] in stats:
            mean, sd = stats[r["structure"]]
            out.append(r | {k: None if r[k] is None else (r[k] - mean) / sd for k in SCORES})
    return out


def combine(a: list[dict], b: list[dict]) -> list[dict]:
    """The mean of two standardised scores of the same contours (rows in the same order).

    Raises:
        ValueError: the rows are not of the same contours.
    """
    out = []
    for ra, rb in zip(a, b, strict=True):
        if (ra["case"], ra["structure"]) != (rb["case"], rb["structure"]):
            raise ValueError(
                f"rows of different contours: {ra['case']}/{ra['structure']} and {rb['case']}/{rb['structure']}"
            )
        out.append(ra | {k: None if ra[k] is None or rb[k] is None else (ra[k] + rb[k]) / 2 for k in SCORES})
    return out


def aucs(rows: list[dict], names: list[str], organs: list[int]) -> dict:
    """ROC AUC (clean above distorted) over all ``rows``, over the organs' and per structure."""
    per = {
        name: round(roc_auc(own), 4)
        for c, name in enumerate(names)
        if (own := [r for r in rows if r["structure"] == c])
    }
    organ_rows = [r for r in rows if r["structure"] in organs]
    return {
        "all": round(roc_auc(rows), 4),
        "organs": round(roc_auc(organ_rows), 4) if organ_rows else None,
        "per_structure": per,
    }


def calibrate(val: dict[str, list[dict]], test: dict[str, list[dict]], structures: list[dict]) -> dict:
    """The card's ``audit`` record from ``checked_contours`` of the val and test splits.

    ``per_structure`` {name: {qam_mean, qam_sd, dice_mean, dice_sd, threshold_val,
    roc_auc_val, roc_auc_test, n_val, n_test, test_at_threshold}} for the structures with
    at least two val contours and one test contour; ``roc_auc_test``: the combined check's
    and each check's alone, over all test contours, the organs' and per structure.
    """
    names = [s["name"] for s in structures]
    organs = [i for i, s in enumerate(structures) if s.get("type", "ORGAN") == "ORGAN"]
    stats = {check: clean_stats(val[check]) for check in ("qam", "dice")}
    enough = {c for c in stats["qam"] if sum(r["structure"] == c for r in val["qam"]) >= 2}
    stats = {check: {c: s for c, s in per.items() if c in enough} for check, per in stats.items()}
    combined = {
        split: combine(standardise(rows["qam"], stats["qam"]), standardise(rows["dice"], stats["dice"]))
        for split, rows in (("val", val), ("test", test))
    }
    per_structure = {}
    for c in sorted(enough):
        own_val = [r for r in combined["val"] if r["structure"] == c]
        own_test = [r for r in combined["test"] if r["structure"] == c]
        if not own_test:
            continue
        threshold = clean_percentile_threshold(own_val)
        (qam_mean, qam_sd), (dice_mean, dice_sd) = stats["qam"][c], stats["dice"][c]
        per_structure[names[c]] = {
            "qam_mean": round(qam_mean, 4),
            "qam_sd": round(qam_sd, 4),
            "dice_mean": round(dice_mean, 4),
            "dice_sd": round(dice_sd, 4),
            "threshold_val": round(threshold, 4),
            "roc_auc_val": round(roc_auc(own_val), 4),
            "roc_auc_test": round(roc_auc(own_test), 4),
            "n_val": len(own_val),
            "n_test": len(own_test),
            "test_at_threshold": at_threshold(own_test, threshold),
        }
    return {
        "n_val_contours": len(combined["val"]),
        "n_test_contours": len(combined["test"]),
        "threshold_rule": f"{CLEAN_FLAGGED:.0%} of the structure's clean validation contours score below it",
        "roc_auc_test": {
            "combined": aucs(combined["test"], names, organs),
            "qam": aucs(test["qam"], names, organs),
            "dice": aucs(test["dice"], names, organs),
        },
        "per_structure": per_structure,
    }
