"""In a real (headless) browser: the viewer of a contour propagation draws the propagated
contours filled and the direct segmentation dashed, lists the agreement per structure, and
saves the physician's choice, after which the RTSTRUCT for the daily scan holds it.

The web application runs in-process (pytest-django ``live_server``) with the propagation
engine replaced by the contract's fake (``tests/conftest.py``); the viewer, the API and the
final RTSTRUCT are real. Prerequisites: chromium + chromedriver (/usr/bin).
"""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from tests import factories
from tests.browser.pages import screenshot, wait_for
from webapp.delineation import rules
from webapp.delineation.models import Job

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_propagated_and_direct_contours_and_the_choice(
    live_server, driver, client, alice, alice_api, tmp_path, fake_propagation
):
    from selenium.webdriver.common.by import By

    def upload(data: bytes, name: str) -> dict:
        response = alice_api.post("/api/scans/", {"file": SimpleUploadedFile(name, data)}, format="multipart")
        assert response.status_code == 201, response.content
        return response.json()

    planning = upload(factories.dicom_zip_with_rtstruct(tmp_path / "p", ("Brainstem", "Mandible")), "p.zip")
    daily = upload(factories.dicom_zip_bytes(tmp_path / "d"), "d.zip")
    (rs,) = rules.structure_sets(planning["preflight"])
    response = alice_api.post(
        "/api/jobs/",
        {
            "scan": daily["id"],
            "planning_scan": planning["id"],
            "contours_rtstruct": rs["sop_instance_uid"],
            "kind": "propagate",
            "model": "dual-head",
        },
        format="json",
    )
    job_id = response.json()["id"]
    assert Job.objects.get(pk=job_id).status == "succeeded"  # eager: run when the request committed

    client.force_login(alice)
    driver.get(f"{live_server.url}/accounts/login/")
    driver.add_cookie({"name": "sessionid", "value": client.cookies["sessionid"].value, "path": "/"})
    driver.get(f"{live_server.url}/jobs/{job_id}/")
    plot = driver.find_element(By.ID, "plot")
    wait_for(lambda: plot.get_attribute("data-index"), 60, "the first slice in the viewer")
    driver.find_element(By.CSS_SELECTOR, "tr[data-structure='Brainstem'] button").click()  # its centre slice
    wait_for(lambda: "Brainstem" in (plot.get_attribute("data-direct") or ""), 30, "the direct Brainstem")
    traces = driver.execute_script(
        "return document.getElementById('plot').data.map(t => [t.name, t.meta ? t.meta.kind : null,"
        " t.line ? t.line.dash || null : null]);"
    )
    assert ["Brainstem", "fill", None] in traces
    assert ["Brainstem direct", "direct", "dash"] in traces
    rows = driver.find_elements(By.CSS_SELECTOR, "#propagation-table tbody tr")
    assert [r.get_attribute("data-structure") for r in rows] == ["Brainstem", "Mandible"]
    assert "0.75" in rows[0].text and "disagree" in rows[0].text and "warned" in rows[0].get_attribute("class")
    screenshot(driver, "adapt_viewer.png")

    # Hiding the direct segmentation removes its dashed outlines.
    driver.find_element(By.ID, "direct-toggle").click()
    wait_for(lambda: plot.get_attribute("data-direct") == "", 10, "the direct contours hidden")

    # Keep the direct Brainstem, save: the job records it and the table shows it.
    driver.find_element(By.CSS_SELECTOR, "input[name='keep-1'][value='direct']").click()
    driver.find_element(By.ID, "save-choices").click()
    status = driver.find_element(By.ID, "choices-status")
    wait_for(lambda: status.text.startswith("Saved"), 60, "the choices saved")
    assert Job.objects.get(pk=job_id).choices == {"Brainstem": "direct", "Mandible": "propagated"}
    assert driver.find_element(By.CSS_SELECTOR, "input[name='keep-1'][value='direct']").is_selected()
    href = driver.find_element(By.ID, "download-final-rtstruct").get_attribute("href")
    assert href.startswith(f"{live_server.url}/api/jobs/{job_id}/final_rtstruct.dcm")
    assert not driver.find_element(By.ID, "viewer-error").text
