"""The adaptive workflow with the real engine: an uploaded planning CT with its RTSTRUCT and a
daily CT of the same patient (the same small generated phantom, a new series), a propagation
job run by the real ``engine.infer.propagate`` with the rigid elastix method and with the
shipped joint model chosen as best (after its affine pre-alignment, with its direct
segmentation of the daily scan), and the final RTSTRUCT for the daily scan downloaded and read
back. The API and the viewer's
choices are covered with a fake engine in ``test_adapt_workflow.py``."""

from __future__ import annotations

import io
import json

import pydicom
import pytest

from tests.conftest import get_export
from tests.realdata.test_propagate_real import BEST_JOINT_MODEL
from tests.workflow import content, propagate, rtstruct_uid

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("model", ["rigid", BEST_JOINT_MODEL])
def test_a_propagation_runs_on_the_real_engine(alice_api, planning, daily, django_capture_on_commit_callbacks, model):
    response = propagate(
        alice_api,
        daily["id"],
        planning["id"],
        django_capture_on_commit_callbacks,
        contours_rtstruct=rtstruct_uid(planning),
        model=model,
    )
    assert response.status_code == 201, response.content
    job = alice_api.get(f"/api/jobs/{response.json()['id']}/").json()
    assert job["status"] == "succeeded", job["error"]
    report = json.loads(content(alice_api.get(f"/api/jobs/{job['id']}/propagation.json")))
    assert {s["name"] for s in report["structures"]} == {"Brainstem", "Mandible"}
    assert all(s["volume_ml"] > 0 for s in report["structures"]), report["structures"]
    assert report["folding_percent"] == 0.0
    final = get_export(alice_api, f"/api/jobs/{job['id']}/final_rtstruct.dcm", django_capture_on_commit_callbacks)
    assert final.status_code == 200
    rtstruct = pydicom.dcmread(io.BytesIO(content(final)))
    assert sorted(r.ROIName for r in rtstruct.StructureSetROISequence) == ["Brainstem", "Mandible"]
    daily_series = {s["series_instance_uid"] for s in daily["preflight"]["series"] if "series_instance_uid" in s}
    referenced = (
        rtstruct.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    )
    assert not daily_series or referenced.SeriesInstanceUID in daily_series
    if model == "rigid":  # a registration only: no direct segmentation to compare with
        assert all(s["dice_vs_direct"] is None for s in report["structures"])
    else:  # the joint model segments the daily scan too; every structure gets a verdict
        assert report["kind"] == "joint" and report["prealign"] == "affine"
        assert all("warning" in s for s in report["structures"])
