"""Could the audit's check do better with other weights or other checks? (docs/noisy-labels.md)

    python -m engine calibrate-audit --model hn-rt   # first: var/evaluate/hn-rt-audit.json
    python experiments/audit_checks.py [--model hn-rt] [--seed 1]

Reads every contour's two checks (critic score, Dice with the model) that
``calibrate-audit`` wrote, adds the mean surface distance and HD95 of the same contours to
the model's delineation of the structure on the CT's grid (``engine.metrics.agreement``
against ``ModelView.delineation``, as the audit measures them; written to
``var/evaluate/MODEL-audit-distances.json`` and reused while the weights are the same;
about 10 minutes on 2 cores), and prints the test ROC AUC (all contours, organs, per
structure; for the organs also clean against each range of distortion alone) of:

* the critic and the Dice averaged with the critic's weight 0, 0.25, 0.5 (the audit), 0.75
  and 1, and with a weight chosen per structure on val from those;
* the surface distances alone and averaged with the other checks, each standardised per
  structure on the clean val contours as the audit standardises its two.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.metrics import agreement  # noqa: E402
from engine.models.registry import load_model  # noqa: E402
from engine.train.audit_calibration import SCORES, aucs, clean_stats, standardise, viewed_cases  # noqa: E402
from engine.train.critic_2d import roc_auc, score_contours  # noqa: E402

EVALUATE = ROOT / "var" / "evaluate"
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
# A contour the model does not delineate at all has no surface distance: scored as this far.
NO_SURFACE_MM = {"msd": 50.0, "hd95": 100.0}


def distances(model_name: str, data: Path, seed: int) -> dict[str, list[dict]]:
    """{split: rows of [MSD, HD95] (mm) per contour, clean and distorted}, as calibrate-audit
    distorts them (same seed, same order)."""
    model = load_model(model_name)
    cfg = model.config
    out = {}
    for split in ("val", "test"):
        cases = viewed_cases(model, data, split)

        def measure(k, image, mask, c, cases=cases):
            found = agreement(mask > 0, cases[k]["view"].delineation(c), cases[k]["volume"].spacing)
            return [found.msd_mm, found.hd95_mm]

        out[split] = score_contours(measure, cases, cfg["spacing_mm"], seed)
        print(f"{split}: {len(cases)} cases measured", flush=True)
    return out


def as_check(checked: list[dict], measured: list[dict], index: int, name: str) -> list[dict]:
    """Rows of ``checked``'s contours scored by minus the distance ``index`` of ``measured``
    (higher: more plausible, as the other checks), None where ``checked`` has None."""
    by_contour = {(r["case"], r["structure"]): r for r in measured}

    def minus(value: list | None) -> float | None:
        if value is None:
            return None
        return -(value[index] if value[index] is not None else NO_SURFACE_MM[name])

    return [
        r | {k: None if r[k] is None else minus(by_contour[(r["case"], r["structure"])][k]) for k in SCORES}
        for r in checked
    ]


def mix(parts: list[list[dict]], weights: list[dict[int, float]]) -> list[dict]:
    """Per contour, the weighted sum of standardised checks (weights per structure index)."""
    out = []
    for rows in zip(*parts, strict=True):
        c = rows[0]["structure"]
        out.append(
            rows[0]
            | {
                k: None
                if any(r[k] is None for r in rows)
                else sum(w[c] * r[k] for w, r in zip(weights, rows, strict=True))
                for k in SCORES
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hn-rt")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "openkbp")
    args = parser.parse_args()
    torch.set_num_threads(2)
    checked = json.loads((EVALUATE / f"{args.model}-audit.json").read_text())
    cached = EVALUATE / f"{args.model}-audit-distances.json"
    identity = {"weights_sha256": checked["weights_sha256"], "seed": args.seed}
    measured = json.loads(cached.read_text()) if cached.exists() else {}
    if measured.get("identity") != identity:
        measured = {"identity": identity} | distances(args.model, args.data, args.seed)
        cached.write_text(json.dumps(measured))
    structures = load_model(args.model).config["structures"]
    names = [s["name"] for s in structures]
    organs = [i for i, s in enumerate(structures) if s["type"] == "ORGAN"]
    rows = {
        split: checked["per_contour"][split]
        | {
            name: as_check(checked["per_contour"][split]["qam"], measured[split], i, name)
            for i, name in enumerate(NO_SURFACE_MM)
        }
        for split in ("val", "test")
    }
    stats = {check: clean_stats(rows["val"][check]) for check in rows["val"]}
    z = {split: {check: standardise(rows[split][check], stats[check]) for check in rows[split]} for split in rows}
    every = range(len(names))

    def report(label: str, checks: tuple[str, ...], weights: list[dict[int, float]]) -> None:
        mixed = mix([z["test"][c] for c in checks], weights)
        test = aucs(mixed, names, organs)
        per = ", ".join(f"{n} {v:.3f}" for n, v in test["per_structure"].items())
        organ_rows = [r for r in mixed if r["structure"] in organs]
        ranges = ", ".join(f"{k} {roc_auc(organ_rows, (k,)):.3f}" for k in SCORES[1:])
        print(
            f"{label}: test all {test['all']:.3f}, organs {test['organs']:.3f} (organs, clean against {ranges}; {per})"
        )

    for name in NO_SURFACE_MM:
        report(f"{name} alone", (name,), [dict.fromkeys(every, 1.0)])
    for w in WEIGHTS:
        report(f"critic weight {w}", ("qam", "dice"), [dict.fromkeys(every, w), dict.fromkeys(every, 1 - w)])
    chosen = {}
    for c in every:
        own = {check: [r for r in z["val"][check] if r["structure"] == c] for check in ("qam", "dice")}
        chosen[c] = max(WEIGHTS, key=lambda w: roc_auc(mix([own["qam"], own["dice"]], [{c: w}, {c: 1 - w}])))
    report(
        f"critic weight chosen per structure on val {chosen}",
        ("qam", "dice"),
        [chosen, {c: 1 - w for c, w in chosen.items()}],
    )
    for checks in (("qam", "msd"), ("qam", "dice", "msd"), ("qam", "dice", "hd95"), ("qam", "dice", "msd", "hd95")):
        report(" + ".join(checks), checks, [dict.fromkeys(every, 1 / len(checks))] * len(checks))


if __name__ == "__main__":
    main()
