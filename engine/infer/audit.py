"""Contour audit: how plausible is each contour of a structure set, and does it agree
with the model's own delineation?

``python -m engine audit INPUT [--contours RTSTRUCT] --model hn-rt --out DIR``

For every ROI of the structure set whose name is one of the model's structures:

* the QAM score: the model's contour-quality critic, a trained quality awareness module
  (Pick-and-Learn, Zhu, Shi and Wu, MICCAI 2019; ``engine.infer.critic``), looks at the
  image with this one contour and gives a score in [-lambda, lambda] (the OCM bound); the
  lower, the less plausible. The shipped critic is 2D: it scores every axial slice through
  the contour and averages (``engine.train.critic_2d`` trains it to rank contours
  corrupted by the noise protocol below the clean ones);
* Dice, mean surface distance (MSD, symmetric) and HD95 in mm against the model's
  delineation of the same structure (``engine.metrics``), on the CT's own grid: the
  structure on its own (``ModelView.delineation``), with the voxels it shares with another
  (a parotid inside a PTV), as the physician's ROI of it holds them.

The QAM score and the Dice are judged together (``engine.models.card.AuditRule``,
docs/noisy-labels.md "The audit's check in the product"): each is standardised by
the mean and standard deviation over sound (clean validation) contours of the structure,
and their mean is the contour's combined score. A contour is flagged when that score is
below its structure's threshold (about 1 in 10 sound validation contours score below it),
for the structures on which the combined check separates deliberately distorted contours
from sound ones with a validation ROC AUC of at least ``MIN_AUC_TO_FLAG``
(``engine.train.audit_calibration``). Elsewhere (the PTVs: a margin the image does not
show) the score is shown and a contour is flagged only when its Dice with the model is
below the clean validation mean minus two standard deviations. A model whose card holds
no calibration for its current weights flags by Dice below ``FALLBACK_MIN_DICE`` only. The
audit informs a review; it does not replace one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import InputError
from engine.infer.critic import AuditError, Critic, load_critic, qam_score
from engine.infer.grid import (
    StructureOnGrid,
    image_to_model_grid,
    labels_from_structures,
    labels_to_model_grid,
    structures_to_input_grid,
)
from engine.infer.segment import STAGE_END, structure_probabilities
from engine.io.dicom_files import read_upload
from engine.io.reader import read_input
from engine.io.rtstruct_import import ImportedROI, import_rtstruct, read_rtstruct
from engine.metrics import surface_metrics
from engine.models.card import MIN_AUC_TO_FLAG, AuditRule
from engine.models.registry import LoadedModel, load_model
from engine.results import ResultFolder
from engine.volume import LabelMap, Volume

Progress = Callable[[str, int], None]

# Dice below which a contour disagrees with the model when the card has no calibration.
FALLBACK_MIN_DICE = 0.5


@dataclass
class StructureAudit:
    roi_name: str
    structure: str  # the model's (TG-263) name
    qam_score: float
    dice: float
    msd_mm: float | None
    hd95_mm: float | None
    model_volume_cm3: float
    contour_volume_cm3: float
    flagged: bool = False
    reasons: list[str] = field(default_factory=list)
    # The combined check (AuditRule.score; None without a calibration), its test ROC AUC,
    # the threshold it flags below (None where it does not act on this structure: the
    # score is shown only) and its val ROC AUC, which decides that.
    check_score: float | None = None
    check_auc: float | None = None
    check_threshold: float | None = None
    check_auc_val: float | None = None


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def match_structures(roi_names: list[str], model: LoadedModel) -> dict[str, int]:
    """ROI name -> index of the model structure it names (TG-263 name or the dataset's
    source name, ignoring case, spaces and underscores); unmatched ROIs are left out."""
    index = {}
    for i, s in enumerate(model.config["structures"]):
        index[_key(s["name"])] = i
        index[_key(s.get("source", s["name"]))] = i
    return {n: index[_key(n)] for n in roi_names if _key(n) in index}


@dataclass(frozen=True)
class ModelView:
    """What a contour is checked against: the model's delineation of each structure on the
    CT's (I, J, K) grid (``structures``, probabilities in a box each), the label map made of
    them (what the viewer shows) and the image on the model's grid (X, Y, Z), windowed as
    the critic was trained."""

    labels: LabelMap
    structures: list[StructureOnGrid | None]
    threshold: float
    image: np.ndarray

    def delineation(self, index: int) -> np.ndarray:
        """(I, J, K) bool: the model's delineation of structure ``index`` on its own, with
        the voxels it shares with another structure (an organ inside a PTV), which the label
        map gives to only one of them."""
        structure = self.structures[index]
        if structure is None:
            return np.zeros(self.labels.array.shape, dtype=bool)
        return structure.mask(self.labels.array.shape, self.threshold)


def model_view(volume: Volume, model: LoadedModel, progress: Progress | None = None) -> ModelView:
    """Run the model on ``volume`` once, for every contour of it to be checked."""
    cfg = model.config
    structures = structures_to_input_grid(structure_probabilities(volume, model, progress), volume, cfg["threshold"])
    labels = labels_from_structures(structures, volume, [s["label"] for s in cfg["structures"]], cfg["threshold"])
    image = image_to_model_grid(volume, cfg["spacing_mm"], cfg["window_hu"], cfg["axcodes"])[0].numpy()
    return ModelView(labels, structures, cfg["threshold"], image)


def critic_score(
    view: ModelView, volume: Volume, mask: np.ndarray, index: int, model: LoadedModel, critic: Critic
) -> float | None:
    """The critic's score of the contour ``mask`` ((I, J, K) 0/1 on ``volume``'s grid) of
    the model's structure ``index``, resampled onto the model's grid; None when the
    contour is thinner than that grid (nothing of it is left there)."""
    cfg = model.config
    on_grid = labels_to_model_grid(LabelMap(mask.astype(np.uint8), volume.affine), cfg["spacing_mm"], cfg["axcodes"])[
        0
    ].numpy()
    if not on_grid.any():
        return None
    return qam_score(critic, view.image, on_grid, index, len(cfg["structures"]))


def _judge(entry: StructureAudit, rule: AuditRule | None) -> None:
    """Set ``entry``'s combined check and the reasons it is flagged."""
    if rule is None:
        if entry.dice < FALLBACK_MIN_DICE:
            entry.reasons.append(f"Dice {entry.dice:.2f} with the model's delineation, below {FALLBACK_MIN_DICE:.2f}")
        return
    score = rule.score(entry.qam_score, entry.dice)
    entry.check_score, entry.check_auc, entry.check_auc_val = round(score, 2), rule.test_auc, rule.val_auc
    if rule.acts:
        entry.check_threshold = rule.threshold
        if score < rule.threshold:
            entry.reasons.append(
                f"the quality score ({entry.qam_score:.2f}) and the Dice with the model's delineation "
                f"({entry.dice:.2f}) together rate it {score:.2f}, below {rule.threshold:.2f}: "
                "further from a sound contour of this structure than 9 in 10 sound contours are"
            )
    elif entry.dice < rule.min_dice:
        entry.reasons.append(
            f"Dice {entry.dice:.2f} with the model's delineation, below the {rule.min_dice:.2f} "
            "the model reaches with nearly every sound contour"
        )


def audit_volume(
    volume: Volume,
    rois: list[ImportedROI],
    model: LoadedModel,
    critic: Critic,
    progress: Progress | None = None,
) -> tuple[list[StructureAudit], list[str], LabelMap]:
    """Audit the ROIs (masks on ``volume``'s (I, J, K) grid) against ``model``.

    Returns (one StructureAudit per matched, non-empty ROI, sorted worst Dice first;
    notes on the ROIs not audited; the model's label map on the volume's grid).

    Raises:
        AuditError: no ROI names one of the model's structures, or every such ROI is
            empty on this image (its contours lie outside it, or it has none); raised
            before the network runs.
    """
    cfg = model.config
    matched = match_structures([r.name for r in rois], model)
    if not matched:
        names = ", ".join(s["name"] for s in cfg["structures"])
        raise AuditError(f"no contour in the structure set has the name of a structure this model delineates ({names})")
    if not any(r.mask.any() for r in rois if r.name in matched):
        why = "; ".join(f"{r.name}: {', '.join(r.notes) or 'no contours'}" for r in rois if r.name in matched)
        raise AuditError(
            "no contour of the structures this model delineates lies on the image, "
            f"so there is nothing to audit; the contours may be outside the image or "
            f"drawn on another scan ({why})"
        )
    notes = [
        f"{r.name}: not audited (the model does not delineate a structure of that name)"
        for r in rois
        if r.name not in matched
    ]
    view = model_view(volume, model, progress)
    rules = model.card.audit_rules(model.weights_sha256, critic.weights_sha256)
    voxel_cm3 = view.labels.voxel_volume_mm3 / 1000.0
    results = []
    for roi in rois:
        if roi.name not in matched:
            continue
        if not roi.mask.any():
            notes.append(f"{roi.name}: not audited (the contour is empty)")
            continue
        i = matched[roi.name]
        structure = cfg["structures"][i]
        score = critic_score(view, volume, roi.mask, i, model, critic)
        if score is None:
            notes.append(f"{roi.name}: not audited (thinner than the model's grid)")
            continue
        predicted = view.delineation(i)
        dice, msd, hd95 = surface_metrics(roi.mask > 0, predicted, volume.spacing)
        entry = StructureAudit(
            roi.name,
            structure["name"],
            round(score, 3),
            round(dice, 3),
            msd,
            hd95,
            round(float(predicted.sum()) * voxel_cm3, 2),
            round(float((roi.mask > 0).sum()) * voxel_cm3, 2),
        )
        _judge(entry, rules.get(structure["name"]))
        entry.flagged = bool(entry.reasons)
        results.append(entry)
    results.sort(key=lambda r: r.dice)
    notes += _check_notes(results, model.name, bool(rules))
    return results, notes, view.labels


def _check_notes(results: list[StructureAudit], model_name: str, calibrated: bool) -> list[str]:
    """What the combined check means for the audited structures: those it acts on (with
    their ROC AUC and threshold), those it only shows, or that it is not calibrated."""
    if not calibrated:
        return [
            f"The audit of model {model_name} is not calibrated for its current weights "
            f"(python -m engine calibrate-audit --model {model_name}): the scores are shown, and a "
            f"contour is flagged only when its Dice with the model is below {FALLBACK_MIN_DICE:.2f}."
        ]
    judged = [r for r in results if r.check_threshold is not None]
    shown = [r for r in results if r.check_threshold is None and r.check_auc is not None]
    notes = []
    if judged:
        each = ", ".join(
            f"{r.roi_name} (ROC AUC {r.check_auc:.2f}, flags below {r.check_threshold:.2f})" for r in judged
        )
        notes.append(
            "The check (the quality score and the agreement with the model, together) ranks deliberately "
            f"distorted test contours below sound ones well enough to act on {each}; about 1 in 10 sound "
            "contours also score below such a threshold, so a flag asks for a look, not a redraw."
        )
    if shown:
        each = ", ".join(f"{r.roi_name} (ROC AUC {r.check_auc:.2f}, validation {r.check_auc_val:.2f})" for r in shown)
        notes.append(
            f"The check is shown but does not flag {each}: it ranks distorted contours of these structures "
            f"below sound ones too weakly on the validation contours (it acts from ROC AUC {MIN_AUC_TO_FLAG:.2f} "
            "there); they are flagged only when their Dice with the model is far below a sound contour's."
        )
    return notes


def _find_structure_set(input_path: Path, frame_of_reference: str):
    """The one RTSTRUCT in the upload that is drawn on ``frame_of_reference``."""
    others = read_upload(input_path).others
    sets = [ds for ds in others if str(ds.get("Modality", "")) == "RTSTRUCT"]
    on_series = [
        ds
        for ds in sets
        if any(
            str(f.get("FrameOfReferenceUID", "")) == frame_of_reference
            for f in ds.get("ReferencedFrameOfReferenceSequence", [])
        )
    ]
    candidates = on_series or sets
    if len(candidates) != 1:
        raise AuditError(
            "the upload holds no structure set (RTSTRUCT) to audit"
            if not candidates
            else f"the upload holds {len(candidates)} structure sets; give the one to audit"
        )
    return candidates[0]


@dataclass(frozen=True)
class AuditResult:
    structures: list[StructureAudit]
    notes: list[str]
    model_name: str
    weights_sha256: str
    qam_sha256: str
    timings_s: dict[str, float]


def audit_file(
    input_path: str | Path,
    model_name: str,
    out_dir: str | Path,
    contours: str | Path | None = None,
    series: str | None = None,
    progress: Progress | None = None,
) -> AuditResult:
    """Audit a DICOM CT's structure set; writes ``audit.json``, the model's
    ``labels.nii.gz`` and ``structures.json`` and the CT as ``image.nii.gz`` (as
    ``segment`` writes them, so a viewer shows the model's delineation) in ``out_dir``.

    ``contours`` is the RTSTRUCT file; without it, the one RTSTRUCT of the upload drawn
    on the chosen series is used.

    Raises:
        InputError: unreadable or NIfTI input (a structure set references DICOM slices).
        RTStructImportError: an unreadable structure set.
        AuditError: no structure set, no matching structure, or no critic for the model.
        UnknownModelError: ``model_name`` is not shipped.
    """
    report = progress or (lambda stage, pct: None)
    input_path, out = Path(input_path), ResultFolder(out_dir)
    t0 = time.perf_counter()
    report("ingest", 0)
    volume, dicom = read_input(input_path, series)
    if dicom is None:
        raise InputError(
            f"{input_path.name}: the audit needs the DICOM series the structure set was drawn on, not a NIfTI file"
        )
    ds = (
        read_rtstruct(contours)
        if contours is not None
        else _find_structure_set(input_path, str(dicom.header.get("FrameOfReferenceUID", "")))
    )
    rois = import_rtstruct(ds, dicom)
    model = load_model(model_name)
    critic = load_critic(model)
    t1 = time.perf_counter()
    results, notes, labels = audit_volume(volume, rois, model, critic, report)
    t2 = time.perf_counter()
    out.path.mkdir(parents=True, exist_ok=True)
    out.write_image(volume)
    out.write_labels(labels)
    out.write_structures(labels, model.structures, masks=False)
    result = AuditResult(
        results,
        notes + list(dicom.notes),
        model.name,
        model.weights_sha256,
        critic.weights_sha256,
        {"ingest": round(t1 - t0, 2), "audit": round(t2 - t1, 2)},
    )
    out.write_json(out.AUDIT, asdict(result) | {"input": input_path.name})
    report("export", STAGE_END["export"])
    return result


def format_audit(result: AuditResult) -> str:
    """A plain-text table of the audit, worst agreement first."""
    lines = [
        f"{'ROI':<16}{'QAM':>7}{'Dice':>7}{'MSD mm':>9}{'HD95 mm':>9}  flag",
    ]
    for r in result.structures:
        msd = "-" if r.msd_mm is None else f"{r.msd_mm:.1f}"
        hd = "-" if r.hd95_mm is None else f"{r.hd95_mm:.1f}"
        lines.append(
            f"{r.roi_name:<16}{r.qam_score:>7.2f}{r.dice:>7.2f}{msd:>9}{hd:>9}  "
            + ("; ".join(r.reasons) if r.flagged else "")
        )
    lines += result.notes
    return "\n".join(lines)
