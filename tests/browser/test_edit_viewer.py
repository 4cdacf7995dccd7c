"""In headless Chromium: an eraser stroke across a structure on one axial slice of the viewer,
saved as a revision, then approved; the downloaded RTSTRUCT is APPROVED with the reviewer, passes
dciodvfy, and its structure changed on that slice only.

The engine is a fake one writing its label map on the uploaded DICOM series' grid
(``segment_on_the_series_grid``, tests/conftest.py); the RTSTRUCT of the revision is written for real. The server
is Django's live server in this process. Prerequisites: chromium + chromedriver (/usr/bin); missing ones skip
the test, or fail it when CI=true.
"""

from __future__ import annotations

import base64
import io
import time

import nibabel as nib
import numpy as np
import pydicom
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from tests import factories
from tests.conftest import segment_on_the_series_grid
from tests.dicom_tools import dciodvfy_errors
from tests.stack import REPO
from tests.workflow import rtstruct_masks
from webapp.delineation import engine_client
from webapp.delineation.models import Job

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

OUTPUT = REPO / "test-output"  # screenshots (git-ignored)


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)
    return value


def axial(api: APIClient, job_id: str, index: int, revision: int | None = None) -> np.ndarray:
    params = {"plane": "axial", "index": index, **({} if revision is None else {"revision": revision})}
    body = api.get(f"/api/jobs/{job_id}/slice/", params).json()
    return np.frombuffer(base64.b64decode(body["labels"]["data"]), np.uint8).reshape(body["rows"], body["columns"])


def test_an_eraser_stroke_saved_and_approved(live_server, driver, alice, monkeypatch, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    monkeypatch.setattr(engine_client, "available_models", lambda: ["hn-oar"])
    monkeypatch.setattr(engine_client, "run_segmentation", segment_on_the_series_grid)
    api = APIClient()
    api.force_login(alice)
    archive = factories.dicom_zip_bytes(tmp_path / "series")
    upload = SimpleUploadedFile("ct.zip", archive, content_type="application/zip")
    scan = api.post("/api/scans/", {"file": upload}, format="multipart").json()
    job_id = api.post("/api/jobs/", {"scan": scan["id"], "model": "hn-oar"}, format="json").json()["id"]
    assert api.get(f"/api/jobs/{job_id}/").json()["status"] == "succeeded"

    driver.get(f"{live_server.url}/accounts/login/")
    driver.add_cookie({"name": "sessionid", "value": api.cookies["sessionid"].value, "path": "/"})
    driver.get(f"{live_server.url}/jobs/{job_id}/")
    plot = driver.find_element(By.ID, "plot")
    wait_for(lambda: "Brainstem" in (plot.get_attribute("data-structures") or ""), 60, "the contours drawn")
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#revision-history li[data-revision='0']"), 30, "history")
    index = int(plot.get_attribute("data-index"))
    assert index == 4  # through the structures' centre: Brainstem covers axial slices 2 to 4
    Select(driver.find_element(By.ID, "edit-structure")).select_by_value("Brainstem")
    driver.find_element(By.ID, "tool-eraser").click()
    radius = driver.find_element(By.ID, "brush-radius")
    radius.clear()
    radius.send_keys("3")
    # Brainstem covers rows 4-8, columns 4-7 of this slice: a stroke along row 6.5 from column 2 to 10.
    to_screen = """
        const [plot, row, col] = arguments; const l = plot._fullLayout; const [dy, dx] = [2, 2];
        const box = plot.getBoundingClientRect();
        return [l.xaxis.l2p(col * dx) + l._size.l - box.width / 2, l.yaxis.l2p(row * dy) + l._size.t - box.height / 2];
    """
    start = driver.execute_script(to_screen, plot, 6.5, 2)
    end = driver.execute_script(to_screen, plot, 6.5, 10)
    actions = ActionChains(driver).move_to_element_with_offset(plot, int(start[0]), int(start[1])).click_and_hold()
    for t in np.linspace(0, 1, 8)[1:]:
        x, y = start[0] + t * (end[0] - start[0]), start[1] + t * (end[1] - start[1])
        actions = actions.move_to_element_with_offset(plot, int(x), int(y))
    actions.release().perform()
    status = driver.find_element(By.ID, "edit-status")
    wait_for(lambda: "Saved as revision 1" in status.text, 30, "the edit saved")
    driver.find_element(By.ID, "approve-comment").send_keys("Checked")
    driver.find_element(By.ID, "approve").click()
    wait_for(lambda: "approved by alice" in status.text, 30, "the approval")
    wait_for(
        lambda: driver.find_elements(By.CSS_SELECTOR, "#revision-history li[data-revision='1'] .badge"),
        30,
        "the approval in the history",
    )
    OUTPUT.mkdir(exist_ok=True)
    driver.save_screenshot(str(OUTPUT / "viewer-edited-and-approved.png"))

    before, after = axial(api, job_id, 4, revision=0), axial(api, job_id, 4)
    assert (before == 1).sum() > (after == 1).sum() > 0  # a band erased across the structure
    assert not (after[6:8, 4:8] == 1).any()
    (revision,) = [r for r in api.get(f"/api/jobs/{job_id}/revisions/").json() if r["number"] == 1]
    assert revision["edit"]["mode"] == "erase" and revision["changed"] == ["Brainstem"]
    assert revision["approved_by"] == "alice" and revision["approval_comment"] == "Checked"

    data = b"".join(api.get(f"/api/jobs/{job_id}/rtstruct.dcm").streaming_content)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.ApprovalStatus == "APPROVED" and str(ds.ReviewerName) == "alice"
    (tmp_path / "rtstruct.dcm").write_bytes(data)
    assert dciodvfy_errors(tmp_path / "rtstruct.dcm") == []
    masks = rtstruct_masks(data, scan["id"])
    labels = np.asarray(nib.load(Job.objects.get(pk=job_id).result_path / "labels.nii.gz").dataobj)
    changed = [k for k in range(labels.shape[2]) if (masks["Brainstem"][:, :, k] != (labels[:, :, k] == 1)).any()]
    assert changed == [4]  # the contour changed on the edited slice only
    assert (masks["Mandible"] == (labels == 2)).all()
