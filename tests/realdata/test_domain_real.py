"""Real data: the domain check (engine.infer.domain) fires on every series of
../shared/data that is not a head-and-neck CT, with the right reason, and not on OpenKBP.

The network runs only where the reason is the delineation itself (the abdominal CT end
to end through the CLI, a neck CT without its head); the other series are judged by
their image signals or refused on their Modality tag before the network runs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.infer.domain import DomainError, check_domain, image_findings
from engine.infer.segment import segment_file, segment_volume
from engine.io.nifti import read_labels, read_volume
from engine.io.reader import read_input
from engine.models.registry import load_model, model_config
from tests.stack import REPO, data_dir, engine_cli

DOMAIN = model_config("hn-rt")["domain"]


def test_abdominal_ct_is_flagged_in_the_cli(tmp_path):
    source = data_dir("totalseg_example", "example_ct_dicom")
    result = engine_cli("segment", str(source), "--model", "hn-rt", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    domain = json.loads(result.stdout)["domain"]
    assert domain == json.loads((tmp_path / "domain.json").read_text())
    assert not domain["in_domain"]
    assert domain["reasons"][0].startswith("hn-rt delineates head and neck CT scans")
    assert any("covers 40 mm from top to bottom" in r for r in domain["reasons"])
    assert "WARNING: hn-rt delineates head and neck CT scans" in result.stderr


@pytest.mark.parametrize(
    "parts",
    [("ibsi_sts", "STS_001", "nifti", "MR_T1_image.nii.gz"), ("totalseg_example", "example_mr_sm.nii.gz")],
)
def test_mr_without_a_modality_tag_is_flagged_by_its_densities(parts):
    volume, _ = read_input(data_dir(*parts))
    _, reasons = image_findings(volume, DOMAIN)
    assert any("densities do not look like a head and neck CT" in r for r in reasons)


# STS_004's CT is long enough: its densities (a limb, little bone) flag it.
@pytest.mark.parametrize("case, why", [("STS_001", "mm from top to bottom"), ("STS_004", "densities do not look")])
def test_sarcoma_ct_is_flagged(case, why):
    volume, series = read_input(data_dir("ibsi_sts", case, "CT", "image"))
    assert series is not None and series.header.Modality == "CT"
    _, reasons = image_findings(volume, DOMAIN)
    assert any(why in r for r in reasons), reasons


@pytest.mark.parametrize("modality, folder", [("MR", "MR_T1"), ("PT", "PET")])
def test_mr_and_pet_series_are_refused(tmp_path, modality, folder):
    source = data_dir("ibsi_sts", "STS_001", folder, "image")
    with pytest.raises(DomainError, match=f"this is a {modality} series; hn-rt delineates"):
        segment_file(source, "hn-rt", tmp_path)
    assert not (tmp_path / "labels.nii.gz").exists()


def test_neck_without_the_head_is_flagged_on_the_brainstem():
    case = data_dir("openkbp", "pt_104")
    volume = read_volume(case / "ct.nii.gz")
    # Voxel axis k runs superior (RAS z grows with k): keep the slices below the mandible.
    assert volume.affine[2, 2] > 0
    mandible = read_labels(case / "mask_Mandible.nii.gz").array > 0
    below = int(np.nonzero(mandible.any(axis=(0, 1)))[0].min())
    neck = type(volume)(volume.array[:, :, :below].copy(), volume.affine)
    model = load_model("hn-oar")
    labels = segment_volume(neck, model)
    names = {s.label: s.name for s in model.structures}
    result = check_domain(neck, labels, names, DOMAIN, "hn-oar")
    assert not result["in_domain"]
    # Either hn-oar draws no brainstem in the neck, or it draws one below the cord, which
    # the relative position names; both tell the physician why.
    reasons = result["reasons"]
    assert "the brainstem is not above the spinal cord" in reasons or any(
        r.startswith("no ") and "Brainstem" in r.split(" found")[0] for r in reasons
    ), reasons
    assert "Brainstem" in result["structures"]


def test_head_without_the_neck_is_flagged_on_its_extent():
    case = data_dir("openkbp", "pt_104")
    volume = read_volume(case / "ct.nii.gz")
    mandible = read_labels(case / "mask_Mandible.nii.gz").array > 0
    lowest = int(np.nonzero(mandible.any(axis=(0, 1)))[0].min())
    head = type(volume)(volume.array[:, :, lowest:].copy(), volume.affine)
    _, reasons = image_findings(head, DOMAIN)
    assert any(
        "covers 213 mm from top to bottom" in r and "to below the larynx) needs at least 230 mm" in r for r in reasons
    ), reasons


def test_openkbp_test_split_flags_only_the_blanked_ct():
    """Of the 30 test CTs the image signals flag one, pt_143: the OpenKBP release blanked
    it (-1024 HU) outside a strip around the cervical spine, so it shows no brainstem,
    mandible or parotid (none is contoured either): outside the domain, rightly flagged.
    None of the other 29 is flagged (<= 1 %); on val, only a failed delineation is."""
    split = json.loads(data_dir("openkbp", "split.json").read_text())["test"]
    flagged = {
        c: reasons
        for c in split
        if (reasons := image_findings(read_volume(data_dir("openkbp", c) / "ct.nii.gz"), DOMAIN)[1])
    }
    assert list(flagged) == ["pt_143"], flagged
    assert any("shows only 546 cm3 of tissue" in r for r in flagged["pt_143"]), flagged
    # The output signals need the network on every case: their rate is the committed
    # output of experiments/domain_thresholds.py for the weights on the cards.
    recorded = json.loads((REPO / "experiments" / "results" / "domain-hn.json").read_text())
    assert recorded["domain"] == DOMAIN
    for model in ("hn-oar", "hn-rt"):
        assert recorded["weights_sha256"][model] == load_model(model).weights_sha256
        assert recorded["test"][model]["flagged_cases"] == ["pt_143"]
        # On val only pt_89, whose brainstem the network misses though the reference
        # contours it: a failed delineation, rightly flagged, not a scan outside the domain.
        assert recorded["val"][model]["flagged_cases"] == ["pt_89"]
        assert recorded["val"][model]["reasons"] == [
            "no Brainstem found: the scan may not show the whole head and neck "
            "(from above the brainstem to below the larynx)"
        ]
    assert (data_dir("openkbp", "pt_89") / "mask_Brainstem.nii.gz").exists()
