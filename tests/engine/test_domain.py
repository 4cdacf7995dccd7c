"""engine.infer.domain on synthetic volumes: each signal fires alone, with its reason."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.infer.domain import (
    HU_BINS,
    DomainError,
    body_histogram,
    body_volume_cm3,
    check_domain,
    check_modality,
    preflight_findings,
    superior_extent_mm,
)
from engine.models.registry import WEIGHTS_DIR
from engine.volume import LabelMap, Volume

NAMES = {1: "Brainstem", 2: "SpinalCord", 3: "Parotid_R", 4: "Parotid_L", 7: "Mandible"}
AFFINE = np.diag([2.0, 2.0, 2.5, 1.0])  # RAS, 2 x 2 x 2.5 mm
SHAPE = (40, 40, 40)  # 80 x 80 x 100 mm


def _ct() -> Volume:
    hu = np.full(SHAPE, -1000.0, dtype=np.float32)
    hu[5:35, 5:35, :] = 40.0  # soft tissue
    hu[18:22, 18:22, :] = 700.0  # bone
    return Volume(hu, AFFINE)


def _domain() -> dict:
    return {
        "modality": "CT",
        "region": "head and neck",
        "field_of_view": "from above the brainstem to below the larynx",
        "extent_mm": {"threshold": 60.0},
        "body_cm3": {"threshold": 200.0},  # the phantom holds 360 cm3 of body
        "hu_histogram": {"threshold": 0.2, "reference": list(body_histogram(_ct().array))},
        "expected_structures": ["Brainstem", "SpinalCord", "Mandible"],
        "volume_cm3": {name: [0.1, 10.0] for name in NAMES.values()},
    }


def _labels(swap_cord: bool = False, parotids_swapped: bool = False) -> LabelMap:
    lab = np.zeros(SHAPE, dtype=np.uint8)
    brainstem, cord = (slice(28, 34), slice(5, 11))
    if swap_cord:
        brainstem, cord = cord, brainstem
    lab[18:22, 15:19, brainstem] = 1
    lab[18:22, 15:19, cord] = 2
    right, left = (slice(30, 34), slice(6, 10))  # RAS: right = larger x
    if parotids_swapped:
        right, left = left, right
    lab[right, 18:22, 25:29] = 3
    lab[left, 18:22, 25:29] = 4
    lab[12:28, 28:32, 20:24] = 7  # anterior: larger y
    return LabelMap(lab, AFFINE)


def test_in_domain_scan_passes():
    result = check_domain(_ct(), _labels(), NAMES, _domain(), "hn-rt")
    assert result["in_domain"], result["reasons"]
    assert result["signals"]["extent_mm"] == pytest.approx(100.0)
    assert result["signals"]["hu_histogram_distance"] == 0.0


@pytest.mark.parametrize("modality", ["MR", "PT"])
def test_other_modality_is_refused(modality):
    with pytest.raises(DomainError, match=f"this is a {modality} series; hn-rt"):
        check_modality(modality, _domain(), "hn-rt")
    check_modality("CT", _domain(), "hn-rt")
    check_modality("", _domain(), "hn-rt")  # no tag (NIfTI-like): left to the other signals


def test_short_scan_is_flagged_with_its_extent():
    ct = _ct()
    short = Volume(ct.array[:, :, :16].copy(), AFFINE)
    result = check_domain(short, LabelMap(_labels().array[:, :, :16].copy(), AFFINE), NAMES, _domain(), "hn-rt")
    assert not result["in_domain"]
    assert any("covers 40 mm from top to bottom" in r for r in result["reasons"])
    assert superior_extent_mm(short) == pytest.approx(40.0)


def test_too_little_tissue_is_flagged_with_its_volume():
    ct = _ct()
    assert body_volume_cm3(ct) == pytest.approx(30 * 30 * 40 * 10 / 1000)
    sliver = ct.array.copy()
    sliver[5:35, 5:20, :] = -1024.0  # blanked outside a strip, as some OpenKBP CTs are
    result = check_domain(Volume(sliver, AFFINE), _labels(), NAMES, _domain(), "hn-rt")
    assert any("shows only 180 cm3 of tissue" in r and "at least 200 cm3" in r for r in result["reasons"])
    assert result["signals"]["body_cm3"] == pytest.approx(180.0)


def _series(modality: str, size: list[int], spacing: list[float], axcodes: str) -> dict:
    return {"modality": modality, "size": size, "spacing_mm": spacing, "axcodes": axcodes, "status": "ok"}


def test_preflight_names_modality_and_extent_from_the_headers():
    assert preflight_findings(_series("CT", [512, 512, 100], [1.0, 1.0, 2.0], "LPS"), _domain(), "hn-rt") == []
    # The superior-inferior axis is the one whose code is S or I, wherever it is.
    short = preflight_findings(_series("CT", [20, 512, 512], [2.0, 1.0, 1.0], "SRA"), _domain(), "hn-rt")
    assert short == [
        "the scan covers 40 mm from top to bottom; the head and neck (from above the brainstem "
        "to below the larynx) needs at least 60 mm"
    ]
    mr = preflight_findings(_series("MR", [256, 256, 100], [1.0, 1.0, 1.0], "RAS"), _domain(), "hn-rt")
    assert mr == ["this is a MR series; hn-rt delineates head and neck CT scans only, so the job would be refused"]
    # A NIfTI volume has no Modality: nothing to say from it.
    assert preflight_findings(_series("", [64, 64, 64], [2.0, 2.0, 2.0], "RAS"), _domain(), "hn-rt") == []


def test_other_densities_are_flagged():
    ct = _ct()
    mr_like = Volume(np.where(ct.array > -500, 300.0, 0.0).astype(np.float32), AFFINE)
    result = check_domain(mr_like, _labels(), NAMES, _domain(), "hn-rt")
    assert any("densities do not look like a head and neck CT" in r for r in result["reasons"])
    assert len(body_histogram(ct.array)) == len(HU_BINS) - 1


def test_missing_structures_are_named():
    lab = _labels()
    lab.array[lab.array == 1] = 0
    result = check_domain(_ct(), lab, NAMES, _domain(), "hn-rt")
    assert any(r.startswith("no Brainstem found") for r in result["reasons"])
    assert result["structures"]["Brainstem"] == "not found"


def test_implausible_volume_is_marked():
    domain = _domain()
    domain["volume_cm3"]["Mandible"] = [50.0, 100.0]
    result = check_domain(_ct(), _labels(), NAMES, domain, "hn-rt")
    assert "outside 50.0 to 100.0 cm3" in result["structures"]["Mandible"]


@pytest.mark.parametrize(
    "kwargs, text",
    [
        ({"swap_cord": True}, "the brainstem is not above the spinal cord"),
        ({"parotids_swapped": True}, "the left parotid is not left of the right one"),
    ],
)
def test_wrong_relative_positions_are_flagged(kwargs, text):
    result = check_domain(_ct(), _labels(**kwargs), NAMES, _domain(), "hn-rt")
    assert text in result["reasons"]


@pytest.mark.parametrize("name", ["hn-oar", "hn-rt"])
def test_shipped_cards_declare_a_domain(name):
    domain = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())["domain"]
    assert domain["modality"] == "CT" and domain["region"] == "head and neck"
    assert len(domain["hu_histogram"]["reference"]) == len(HU_BINS) - 1
    assert {"Brainstem", "SpinalCord"} <= set(domain["expected_structures"])


def test_body_histogram_does_not_depend_on_memory_order():
    hu = np.random.default_rng(2).uniform(-1100, 1600, (40, 30, 20)).astype(np.float32)
    np.testing.assert_array_equal(body_histogram(np.asfortranarray(hu)), body_histogram(np.ascontiguousarray(hu)))
