"""Real data: the contour audit of a real planning CT's structure set with the shipped
hn-rt model and its critic (openkbp_dicom pt_104, a test-split case)."""

from __future__ import annotations

import json

import numpy as np
from scipy import ndimage

from engine.infer.audit import audit_volume
from engine.infer.critic import load_critic
from engine.io.reader import read_input
from engine.io.rtstruct_import import ImportedROI, import_rtstruct
from engine.models.registry import load_model
from tests.stack import REPO, data_dir, engine_cli


def test_cli_audits_the_structure_set_that_came_with_the_series(tmp_path):
    source = data_dir("openkbp_dicom", "pt_104")
    result = engine_cli("audit", str(source), "--model", "hn-rt", "--out", str(tmp_path), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    audit = json.loads((tmp_path / "audit.json").read_text())
    audited = {s["structure"] for s in audit["structures"]}
    assert {"Mandible", "SpinalCord", "PTV70"} <= audited
    lam = json.loads((REPO / "engine" / "weights" / "hn-rt.json").read_text())["qam"]["lambda"]
    for s in audit["structures"]:
        assert -lam <= s["qam_score"] <= lam and 0.0 <= s["dice"] <= 1.0
    # The physician's own mandible and cord agree with the model: not flagged on Dice.
    by_name = {s["structure"]: s for s in audit["structures"]}
    assert by_name["Mandible"]["dice"] > 0.6 and by_name["SpinalCord"]["dice"] > 0.6
    assert (tmp_path / "labels.nii.gz").exists() and (tmp_path / "image.nii.gz").exists()


def test_a_contour_dilated_by_1cm_scores_lower_and_is_flagged():
    source = data_dir("openkbp_dicom", "pt_104")
    volume, series = read_input(source)
    rtstruct = next(p for p in source.iterdir() if p.name.startswith("rtss"))
    rois = {r.name: r for r in import_rtstruct(rtstruct, series)}
    parotid = next(r for name, r in rois.items() if "parotid" in name.lower())
    radius = np.ceil(10.0 / np.asarray(volume.spacing)).astype(int)
    grid = np.meshgrid(
        *[np.arange(-r, r + 1) * s for r, s in zip(radius, volume.spacing, strict=True)],
        indexing="ij",
    )
    ball = sum(g**2 for g in grid) <= 10.0**2
    dilated = ImportedROI(
        parotid.roi_number,
        parotid.name,
        "ORGAN",
        None,
        ndimage.binary_dilation(parotid.mask > 0, structure=ball).astype(np.uint8),
        parotid.contours,
    )
    model = load_model("hn-rt")
    critic = load_critic(model)
    (clean,), _, _ = audit_volume(volume, [parotid], model, critic)
    (corrupted,), _, _ = audit_volume(volume, [dilated], model, critic)
    assert corrupted.qam_score < clean.qam_score
    assert corrupted.dice < clean.dice and corrupted.msd_mm > clean.msd_mm
    assert corrupted.flagged
