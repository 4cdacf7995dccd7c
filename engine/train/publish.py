"""Publishing a model: ``engine/weights/NAME.pt`` with its card ``NAME.json`` (configuration
+ card, read by ``engine.models.card``) and ``NAME.md`` (for people), written from a
training run and an evaluation.

``publish`` copies a run's best checkpoint and configuration into ``engine/weights``;
``add_evaluation`` records test-split metrics from ``python -m engine evaluate --card``;
``set_audit_calibration`` the contour audit's rules from ``python -m engine calibrate-audit``.
A joint registration run (``engine.train.joint``, ``"kind": "joint"``) is published under
its architecture's name with its test-pair figures from ``metrics.json``.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import torch

from engine.models.card import MIN_AUC_TO_FLAG, ModelCard
from engine.models.registry import WEIGHTS_DIR, sha256_of

INFERENCE_CHOICES = ("test_time_mirror", "inference_bfloat16", "crop_to_body")


def publish(
    run_dir: Path,
    name: str,
    training: dict,
    weights_dir: Path = WEIGHTS_DIR,
    structures: list[str] | None = None,
) -> Path:
    """Copy ``run_dir/best.pt`` (state dict, float32) and its config into ``weights_dir``
    as model ``name`` (a run may be published under another name than its own, e.g. one
    network serving two model names; the card records the run's name).

    ``structures``: serve only these of the run's structures (e.g. the organs of a network
    trained on organs and targets); the network keeps just their output channels
    (``ResSEUNet.keep_outputs``), so they give the same contours as the whole network.

    Raises:
        ValueError: a name in ``structures`` that the run does not segment.
    """
    config = json.loads((run_dir / "config.json").read_text())
    if config.get("kind") == "joint":
        return publish_joint(run_dir, name, training, weights_dir)
    if "model" in config:  # a run of a config file (engine.train.experiment)
        training = {
            **training,
            "run": config["name"],
            "run_config": {k: v for k, v in config.items() if k != "model"},
        }
        config = config["model"]
    # The inference choices are measured on val for each set of weights (set_test_time_mirror,
    # set_inference_bfloat16, set_crop_to_body): new weights start without them.
    config = {**{k: v for k, v in config.items() if k not in INFERENCE_CHOICES}, "name": name}
    weights_dir.mkdir(parents=True, exist_ok=True)
    state = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    if structures is not None:
        config, state = _serve_structures(config, state, structures)
        training = {**training, "served_structures": list(structures)}
    torch.save(state, weights_dir / f"{name}.pt")
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    vals = [r for r in log if "val" in r]
    best = _best_val(run_dir, vals)
    card = {
        **config,
        "card": {
            "date": dt.date.today().isoformat(),
            "weights_sha256": sha256_of(weights_dir / f"{name}.pt"),
            "training": {
                **training,
                "steps": vals[-1]["step"] if vals else None,
                "hours": vals[-1].get("hours") if vals else None,
                "best_val_step": best["step"] if best else None,
                "val_dice": best["val"] if best else None,
            },
        },
    }
    if (weights_dir / f"{name}.json").exists():
        previous = ModelCard.load(name, weights_dir).data
        # They describe the data and the contours, not these weights: a new run keeps them.
        for key in ("domain", "qam"):
            if previous.get(key):
                card[key] = previous[key]
    calibration = run_dir / "qam_auc.json"
    if (run_dir / "qam_best.pt").exists() and calibration.exists():
        card["qam"] = _publish_critic(run_dir, name, json.loads(calibration.read_text()), weights_dir)
    (weights_dir / f"{name}.json").write_text(json.dumps(card, indent=1))
    write_markdown(card, weights_dir / f"{name}.md")
    return weights_dir / f"{name}.pt"


def _best_val(run_dir: Path, vals: list[dict]) -> dict | None:
    """The validation record of the network in ``best.pt``: the last one whose mean is the
    trainer's ``best`` (``last.pt``). Not simply the highest of the log: when a resumed run
    could not bring its best network along (the portable state had no room for it),
    selection started again and ``best.pt`` holds a later, lower one."""
    last = run_dir / "last.pt"
    if last.exists():
        kept = torch.load(last, map_location="cpu", weights_only=False).get("best")
        matching = [r for r in vals if r["val"]["mean"] == kept]
        if matching:
            return matching[-1]
    return max(vals, key=lambda r: r["val"]["mean"]) if vals else None


def _serve_structures(config: dict, state: dict, names: list[str]) -> tuple[dict, dict]:
    """The configuration and state dict of the network restricted to ``names``."""
    from engine.models.registry import build_network

    known = [s["name"] for s in config["structures"]]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"the run segments {', '.join(known)}; cannot serve {', '.join(unknown) or 'nothing'}")
    network = build_network(config)
    network.load_state_dict(state)
    network.keep_outputs([known.index(n) for n in names])
    kept = [next(s for s in config["structures"] if s["name"] == n) for n in names]
    return {**config, "structures": kept}, network.state_dict()


def _publish_critic(run_dir: Path, name: str, calibration: dict, weights_dir: Path) -> dict:
    """Copy a run's QAM as ``NAME-qam.pt`` with its calibration (``qam_auc.json``, written by
    experiments/qam_auc.py or by a critic2d run, ``engine.train.critic_2d``)."""
    if calibration["qam_sha256"] != sha256_of(run_dir / "qam_best.pt"):
        raise ValueError("qam_auc.json was computed for other QAM weights; run experiments/qam_auc.py again")
    state = torch.load(run_dir / "qam_best.pt", map_location="cpu", weights_only=True)
    torch.save(state, weights_dir / f"{name}-qam.pt")
    command = calibration.get("command") or (
        f"python experiments/qam_auc.py {calibration['run']} --seed {calibration['seed']}"
    )
    return {
        "weights": f"{name}-qam.pt",
        "sha256": sha256_of(weights_dir / f"{name}-qam.pt"),
        "lambda": calibration["lambda"],
        "patch": calibration["patch"],
        "spatial_dims": calibration.get("spatial_dims", 3),
        "channels": calibration.get("channels", [8, 16, 32, 32]),
        "threshold": calibration["threshold_val"],
        "roc_auc_test": calibration["roc_auc_test"],
        "per_structure": calibration.get("per_structure", {}),
        "test_at_threshold": calibration["test_at_threshold"],
        "calibration_command": command,
        "training_command": f"python -m engine train experiments/configs/{calibration['run']}.json",
    }


def attach_critic(name: str, critic_run: Path, weights_dir: Path = WEIGHTS_DIR) -> Path:
    """Give shipped model ``name`` the critic of a critic2d run (its ``qam_best.pt`` and
    ``qam_auc.json``), replacing the one it had; the card and ``NAME.md`` are rewritten.

    Raises:
        ValueError: the critic was trained for other structures (names or order) than
            the model delineates, or its calibration is for other weights.
        UnknownModelError: ``name`` is not shipped.
    """
    card = ModelCard.load(name, weights_dir).data
    calibration = json.loads((critic_run / "qam_auc.json").read_text())
    model_structures = [s["name"] for s in card["structures"]]
    if calibration.get("structures") != model_structures:
        raise ValueError(
            f"the critic scores {calibration.get('structures')}, the model delineates {model_structures}: "
            "its label channels would not match"
        )
    card["qam"] = _publish_critic(critic_run, name, calibration, weights_dir)
    (weights_dir / f"{name}.json").write_text(json.dumps(card, indent=1))
    write_markdown(card, weights_dir / f"{name}.md")
    return weights_dir / f"{name}-qam.pt"


def add_evaluation(name: str, result: dict, command: str, weights_dir: Path = WEIGHTS_DIR) -> None:
    """Record an evaluation (``engine.train.evaluate.evaluate`` output) in the card."""
    path = weights_dir / f"{name}.json"
    card = ModelCard.load(name, weights_dir).data
    if result["weights_sha256"] != card["card"]["weights_sha256"]:
        raise ValueError("the evaluation was made with other weights than the card describes")
    card["card"][f"evaluation_{result['split']}"] = {
        "command": command,
        "n_cases": result["n_cases"],
        "mean_dice": result["mean_dice"],
        "per_structure": result["per_structure"],
        "seconds": result["seconds"],
    }
    path.write_text(json.dumps(card, indent=1))
    write_markdown(card, weights_dir / f"{name}.md")


def set_audit_calibration(name: str, calibration: dict, weights_dir: Path = WEIGHTS_DIR) -> None:
    """Store the card's ``audit`` record (``engine.train.audit_calibration.calibrate``, with
    the ``weights_sha256`` and ``qam_sha256`` it was measured with, ``seed`` and
    ``command``), which ``engine.infer.audit`` judges contours by.

    Raises:
        ValueError: it was measured with other network or critic weights than the card's.
    """
    card = ModelCard.load(name, weights_dir).data
    if calibration["weights_sha256"] != card["card"]["weights_sha256"]:
        raise ValueError("the audit was calibrated with other weights than the card describes")
    if calibration["qam_sha256"] != (card.get("qam") or {}).get("sha256"):
        raise ValueError("the audit was calibrated with another critic than the card names")
    card["audit"] = calibration
    (weights_dir / f"{name}.json").write_text(json.dumps(card, indent=1))
    write_markdown(card, weights_dir / f"{name}.md")


def add_domain(name: str, domain: dict, weights_dir: Path = WEIGHTS_DIR) -> None:
    """Store the card's ``domain`` section (``experiments/domain_thresholds.py``), read by
    ``engine.infer.domain``; the weights and their hash are unchanged."""
    path = weights_dir / f"{name}.json"
    card = ModelCard.load(name, weights_dir).data
    card["domain"] = domain
    path.write_text(json.dumps(card, indent=1))
    write_markdown(card, weights_dir / f"{name}.md")


def _set_choice(name: str, key: str, what: str, choice: dict, weights_dir: Path) -> None:
    """Store an inference choice measured on val: ``card[key]`` the switch, ``card["card"][key]``
    the figures; ValueError when they were measured with other weights than the card's."""
    card = ModelCard.load(name, weights_dir).data
    if choice["weights_sha256"] != card["card"]["weights_sha256"]:
        raise ValueError(f"{what} was measured with other weights than the card describes")
    card[key] = bool(choice["on"])
    card["card"][key] = {k: v for k, v in choice.items() if k != "weights_sha256"}
    (weights_dir / f"{name}.json").write_text(json.dumps(card, indent=1))
    write_markdown(card, weights_dir / f"{name}.md")


def set_test_time_mirror(name: str, choice: dict, weights_dir: Path = WEIGHTS_DIR) -> None:
    """Store whether model ``name`` mirrors at test time (``engine.infer.predict``) and the
    val figures that chose it (``experiments/test_time_mirror.py``): ``choice`` holds
    ``on`` (bool), ``weights_sha256``, ``split``, ``mean_dice_off``, ``mean_dice_on``,
    ``per_structure`` {name: [off, on]} and ``command``.

    Raises:
        ValueError: the figures were measured with other weights than the card's.
    """
    _set_choice(name, "test_time_mirror", "the mirroring", choice, weights_dir)


def set_inference_bfloat16(name: str, choice: dict, weights_dir: Path = WEIGHTS_DIR) -> None:
    """Store whether model ``name`` may run its forward passes under bfloat16 autocast
    (``engine.infer.predict.inference_bfloat16``) and the val figures that chose it
    (``experiments/inference_settings.py``): ``choice`` holds ``on`` (bool),
    ``weights_sha256``, ``split``, ``mean_dice_float32``, ``mean_dice_bfloat16`` and
    ``command``.

    Raises:
        ValueError: the figures were measured with other weights than the card's.
    """
    _set_choice(name, "inference_bfloat16", "the precision", choice, weights_dir)


def set_crop_to_body(name: str, choice: dict, weights_dir: Path = WEIGHTS_DIR) -> None:
    """Store whether model ``name`` runs its network only in the box around the body
    (``engine.infer.body``, ``engine.infer.segment.network_box``) and the val figures that
    chose it (``experiments/inference_settings.py``): ``choice`` holds ``on`` (bool),
    ``weights_sha256``, ``split``, ``mean_dice_whole``, ``mean_dice_body`` and ``command``.

    Raises:
        ValueError: the figures were measured with other weights than the card's.
    """
    _set_choice(name, "crop_to_body", "the body crop", choice, weights_dir)


def _architecture_line(card: dict) -> str:
    line = (
        f"- Architecture: {card['architecture']} (3D residual U-Net with squeeze-and-excitation blocks), "
        f"channels {'-'.join(map(str, card['channels']))}"
    )
    if card.get("full_resolution_channels"):
        line += f", plus a first level at the input resolution with {card['full_resolution_channels']} channels"
    if card.get("deep_supervision"):
        line += ", trained with deep supervision (heads at 1/2 and 1/4 resolution, not used at inference)"
    return line + ", one sigmoid output per structure."


def _mirror_line(card: dict) -> list[str]:
    m = card["card"].get("test_time_mirror")
    if not m:
        return []
    state = "on" if card.get("test_time_mirror") else "off"
    return [
        (
            f"- Test-time mirroring (left-right, parotids swapped back): {state}, chosen on the {m['split']} "
            f"split: mean Dice {m['mean_dice_on']:.3f} with it, {m['mean_dice_off']:.3f} without "
            f"(`{m['command']}`)."
        )
    ]


def _bfloat16_line(card: dict) -> list[str]:
    b = card["card"].get("inference_bfloat16")
    if not b:
        return []
    state = "allowed" if card.get("inference_bfloat16") else "not used"
    return [
        (
            f"- bfloat16 inference (where the CPU has AVX512-BF16 or AMX-BF16, and on CUDA): {state}, "
            f"chosen on the {b['split']} split: mean Dice {b['mean_dice_bfloat16']:.3f} in bfloat16, "
            f"{b['mean_dice_float32']:.3f} in float32 (`{b['command']}`; speed: docs/benchmarks.md). "
            "The test-split figures are float32's."
        )
    ]


def _crop_line(card: dict) -> list[str]:
    b = card["card"].get("crop_to_body")
    if not b:
        return []
    state = "on" if card.get("crop_to_body") else "off"
    return [
        (
            f"- Network run only in the box around the body (HU > -500, 20 mm margin): {state}, "
            f"chosen on the {b['split']} split: mean Dice {b['mean_dice_body']:.3f} with it, "
            f"{b['mean_dice_whole']:.3f} over the whole grid (`{b['command']}`; speed: docs/benchmarks.md)."
        )
    ]


def _audit_lines(a: dict) -> list[str]:
    auc = a["roc_auc_test"]
    lines = [
        "",
        "## Contour audit: the check it flags by",
        (
            "- A contour's combined score is the mean of the critic's score and its Dice with this model's "
            "delineation, each standardised by the mean and standard deviation over the structure's clean "
            "validation contours; it is flagged below the structure's threshold "
            f"({a['threshold_rule']}) where the check's val ROC AUC reaches {MIN_AUC_TO_FLAG}, and elsewhere "
            "only when its Dice is below the clean val mean minus two standard deviations."
        ),
        (
            f"- Test ROC AUC, clean vs distorted contours ({a['n_test_contours']} contours, each also dilated or "
            f"eroded by 2-8 and 5-13 mm): combined {auc['combined']['all']:.3f} over all, "
            f"{auc['combined']['organs']:.3f} over the organs (critic alone {auc['qam']['all']:.3f} and "
            f"{auc['qam']['organs']:.3f}, Dice alone {auc['dice']['all']:.3f} and {auc['dice']['organs']:.3f}); "
            f"command `{a['command']}`."
        ),
    ]
    return lines + _rule_table(a["per_structure"], acts=True)


def _rule_table(per_structure: dict, acts: bool) -> list[str]:
    """A per-structure calibration (the critic's, or the audit's check) as a table; ``acts``:
    with a column saying whether the audit flags by it."""
    lines = [
        "",
        "| structure | ROC AUC val | ROC AUC test | threshold | test: clean / distorted called implausible |"
        + (" flags by it |" if acts else ""),
        "|---|---|---|---|---|" + ("---|" if acts else ""),
    ]
    for name, p in per_structure.items():
        at = p["test_at_threshold"]
        lines.append(
            f"| {name} | {p['roc_auc_val']:.3f} | {p['roc_auc_test']:.3f} | {p['threshold_val']:.2f} | "
            f"{at['clean_called_implausible']:.0%} / {at['corrupted_called_implausible']:.0%} |"
            + (f" {'yes' if p['roc_auc_val'] >= MIN_AUC_TO_FLAG else 'no'} |" if acts else "")
        )
    return lines


def _domain_lines(d: dict) -> list[str]:
    return [
        "",
        "## Domain (checked on every job, `engine.infer.domain`)",
        (
            f"- {d['modality']} of the {d['region']}, {d['field_of_view']}; other DICOM "
            "modalities are refused, other scans flagged."
        ),
        (
            f"- Superior-inferior extent at least {d['extent_mm']['threshold']:.0f} mm "
            f"(training {d['extent_mm']['train_range'][0]:.0f} to {d['extent_mm']['train_range'][1]:.0f} mm)."
        ),
        (
            f"- Body HU histogram (HU > -500) within total-variation distance "
            f"{d['hu_histogram']['threshold']:.3f} of the training mean."
        ),
        f"- Structures a scan of the region must show: {', '.join(d['expected_structures'])}.",
        (
            f"- No structure larger than {d['volume_factor']:g}x the 99th percentile of the training contours; "
            f"positions: {'; '.join(d['relations'])}."
        ),
        f"- Thresholds from the val split: `{d['command']}`.",
    ]


def write_markdown(card: dict, path: Path) -> None:
    c = card["card"]
    t = c["training"]
    lines = [
        f"# Model card: {card['name']}",
        "",
        _architecture_line(card),
        f"- Structures (TG-263): {', '.join(s['name'] for s in card['structures'])}.",
        (
            f"- Input: CT reoriented to {card['axcodes']}, resampled to {' x '.join(map(str, card['spacing_mm']))} mm, "
            f"HU window {card['window_hu'][0]:.0f} to {card['window_hu'][1]:.0f}; output resampled back to the input grid."
        ),
        f"- Weights: `{card['name']}.pt`, SHA-256 `{c['weights_sha256']}`; card date {c['date']}.",
        *_mirror_line(card),
        *_bfloat16_line(card),
        *_crop_line(card),
        "",
        "## Data and training",
        f"- Data: {t['data']}",
        f"- Split: {t['split']}",
        f"- Command: `{t['command']}`",
        f"- Procedure: {t['procedure']}",
        f"- Hardware and time: {t['hardware']}",
    ]
    if t.get("hours") is not None:
        lines.append(
            f"- Trained {t['steps']} steps in {t['hours']:.2f} hours (the trainer's own count, "
            "summed over the pieces of the run)."
        )
    if t.get("notes"):
        lines.append(f"- Notes: {t['notes']}")
    if t.get("val_dice"):
        per = ", ".join(f"{k} {v:.3f}" for k, v in t["val_dice"]["per_structure"].items())
        lines.append(
            f"- Best validation mean Dice {t['val_dice']['mean']:.3f} at step {t['best_val_step']} "
            f"(model-grid Dice, used for checkpoint selection): {per}."
        )
    for key in sorted(k for k in c if k.startswith("evaluation_")):
        e = c[key]
        lines += [
            "",
            f"## Accuracy on the {key.split('_', 1)[1]} split ({e['n_cases']} cases)",
            (
                f"Command: `{e['command']}` ({e['seconds']:.0f} s). Dice and HD95 on each CT's own grid, "
                "only where the structure is contoured; 'missed' = contoured but not delineated at all "
                "(Dice 0, no HD95)."
            ),
            "",
            "| structure | cases | Dice mean ± sd | HD95 mean (mm) | HD95 median (mm) | missed |",
            "|---|---|---|---|---|---|",
        ]
        for name, s in e["per_structure"].items():
            lines.append(
                f"| {name} | {s['n']} | {s['dice_mean']:.3f} ± {s['dice_std']:.3f} | "
                f"{s['hd95_mm_mean']} | {s['hd95_mm_median']} | {s['missed']} |"
            )
        lines.append(f"| **mean over structures** | | **{e['mean_dice']:.3f}** | | | |")
    if card.get("qam"):
        q = card["qam"]
        auc = q["roc_auc_test"]
        lines += [
            "",
            "## Contour-quality critic (`python -m engine audit`)",
            (
                f"- Weights: `{q['weights']}`, SHA-256 `{q['sha256']}`; QAM + OCM, lambda {q['lambda']}, "
                + (
                    f"{q['patch']} x {q['patch']}-pixel crops of every axial slice through the contour, "
                    "centred on it; the contour's score is the mean over its slices."
                    if q.get("spatial_dims") == 2
                    else f"patches of {q['patch']}^3 voxels centred on the contour."
                )
            ),
            (
                f"- ROC AUC, clean vs corrupted test contours: {auc['both']:.3f} "
                f"(small range {auc['small']:.3f}, large range {auc['large']:.3f}); command `{q['calibration_command']}`"
                + (f", trained by `{q['training_command']}`." if q.get("training_command") else ".")
            ),
            (
                f"- Threshold {q['threshold']:.3f} (val split: 10 % of clean contours score below it); on test it calls "
                f"{q['test_at_threshold']['clean_called_implausible']:.0%} of clean and "
                f"{q['test_at_threshold']['corrupted_called_implausible']:.0%} of corrupted contours implausible."
            ),
        ]
        if q.get("per_structure"):
            lines.append(
                "- Per structure, the critic alone (the audit judges by it together with the agreement "
                "with the model: below):"
            )
            lines += _rule_table(q["per_structure"], acts=False)
    if card.get("audit"):
        lines += _audit_lines(card["audit"])
    if card.get("domain"):
        lines += _domain_lines(card["domain"])
    lines += [
        "",
        "## Limits",
        (
            "- Trained on OpenKBP planning CTs only (head and neck, resampled by OpenKBP to 128^3); "
            "other anatomies or MR give meaningless output."
        ),
        "- Results must be reviewed and edited by a qualified clinician before clinical use.",
        "",
        "Data: OpenKBP (Babier et al., Med Phys 48:5549-5561, 2021), CTs from TCIA head-and-neck collections.",
    ]
    path.write_text("\n".join(lines) + "\n")


def publish_joint(run_dir: Path, name: str, training: dict, weights_dir: Path = WEIGHTS_DIR) -> Path:
    """Copy a joint run's ``best.pt`` as ``NAME.pt`` with a card of ``"kind": "joint"``
    (the model configuration, the training record and the test-pair metrics).

    Raises:
        ValueError: ``name`` is not the run's architecture, or the run has no metrics.
    """
    config = json.loads((run_dir / "config.json").read_text())
    model = config["model"]
    if model["architecture"] != name:
        raise ValueError(f"run {run_dir} trained {model['architecture']!r}, not {name!r}")
    if not (run_dir / "metrics.json").exists():
        raise ValueError(f"run {run_dir} has no metrics.json: it has not finished")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    weights_dir.mkdir(parents=True, exist_ok=True)
    state = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    torch.save(state, weights_dir / f"{name}.pt")
    evaluation = {
        k: {key: v for key, v in metrics[k].items() if key != "pairs"} for k in metrics if k.startswith("evaluation_")
    }
    card = {
        **model,
        "name": name,
        "kind": "joint",
        "card": {
            "date": dt.date.today().isoformat(),
            "weights_sha256": sha256_of(weights_dir / f"{name}.pt"),
            "training": {
                **training,
                "run_config": {k: v for k, v in config.items() if k != "model"},
                "best_val_step": metrics["best_val_step"],
                "val": metrics["val"],
            },
            **evaluation,
        },
    }
    (weights_dir / f"{name}.json").write_text(json.dumps(card, indent=1))
    write_joint_markdown(card, weights_dir / f"{name}.md")
    return weights_dir / f"{name}.pt"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_joint_markdown(card: dict, path: Path) -> None:
    """The card of a joint registration model for people (``publish_joint``)."""
    c, t = card["card"], card["card"]["training"]
    lines = [
        f"# Model card: {card['name']} (joint model for contour propagation)",
        "",
        (
            f"- Architecture: `{card['architecture']}` ({t['architecture_note']}), "
            f"U-Net widths {'-'.join(map(str, card['features']))}, options {card.get('options') or 'none'}."
        ),
        (
            "- Contract: fixed (daily) and moving (planning) CT on a working grid derived from the fixed "
            f"image, {card['spacing_mm'][0]:g} mm isotropic {card['axcodes']}, HU {card['window_hu'][0]:.0f} to "
            f"{card['window_hu'][1]:.0f} scaled to [0, 1], each size a multiple of 16 -> a DDF in working-grid "
            "voxels (MONAI Warp convention) and, where the model segments, logits of the fixed image "
            f"(channel 0 background). `propagate` runs it after a classical {card.get('prealign', 'affine')} "
            "pre-alignment (elastix, card field `prealign`) and composes the two fields."
        ),
        f"- Structures (TG-263): {', '.join(s['name'] for s in card['structures'])}.",
        f"- Weights: `{card['name']}.pt`, SHA-256 `{c['weights_sha256']}`; card date {c['date']}.",
        "",
        "## Data and training",
        f"- Data: {t['data']}",
        f"- Pairs and split: {t['split']}",
        f"- Command: `{t['command']}`",
        f"- Procedure: {t['procedure']}",
        f"- Hardware and time: {t['hardware']}",
        (
            f"- Checkpoint: best validation mean propagated Dice {_fmt(t['val']['mean'])} at step "
            f"{t['best_val_step']} (before registration {_fmt(t['val']['identity']['mean_dice'])})."
        ),
    ]
    for key in sorted(k for k in c if k.startswith("evaluation_")):
        e = c[key]
        split = key.split("_", 1)[1]
        lines += [
            "",
            f"## Accuracy on {e['n_pairs']} {split}-split pairs",
            (
                f"Scored by `engine.train.joint.evaluate_pairs` at the end of the run, on the "
                f"{card['spacing_mm'][0]:g} mm working grid (not the CT's own grid): propagated = the planning "
                "contours warped as probabilities and thresholded at 0.5; before = no registration; direct = "
                "the model's own segmentation of the fixed image. Means over pairs where the structure is "
                "contoured in both images."
            ),
            "",
            "| structure | pairs | Dice propagated | Dice before | Dice direct | HD95 propagated (mm) | MSD propagated (mm) |",
            "|---|---|---|---|---|---|---|",
        ]
        direct = (e.get("direct") or {}).get("per_structure", {})
        for name, s in e["propagated"]["per_structure"].items():
            lines.append(
                f"| {name} | {s['n']} | {_fmt(s['dice'])} | "
                f"{_fmt(e['identity']['per_structure'][name]['dice'])} | "
                f"{_fmt(direct.get(name, {}).get('dice'))} | {_fmt(s['hd95_mm'], 1)} | {_fmt(s['msd_mm'], 1)} |"
            )
        lines += [
            (
                f"| **mean** | | **{_fmt(e['propagated']['mean_dice'])}** | {_fmt(e['identity']['mean_dice'])} | "
                f"{_fmt((e.get('direct') or {}).get('mean_dice'))} | | |"
            ),
            "",
            (
                f"- DVF error on the synthetic pairs (mean over the body, HU > -500): {_fmt(e['dvf_error_mm'], 2)} mm "
                f"(the true displacement itself: {_fmt(e['dvf_error_before_mm'], 2)} mm)."
            ),
            f"- Folding (Jacobian determinant <= 0): {_fmt(e['folding_percent'], 4)} % of voxels.",
            f"- Time: {_fmt(e['seconds_per_pair'], 2)} s per pair (network only, 1 thread of a shared 2-core CPU).",
        ]
    if t.get("notes"):
        lines += ["", "## Limits", f"- {t['notes']}"]
    lines += [
        "- Results must be reviewed and edited by a qualified clinician before clinical use.",
        "",
        "Data: OpenKBP (Babier et al., Med Phys 48:5549-5561, 2021), CTs from TCIA head-and-neck collections.",
    ]
    path.write_text("\n".join(lines) + "\n")
