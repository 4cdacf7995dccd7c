"""In a real (headless) browser: log in, upload an openkbp DICOM folder through the upload
page, watch the job in the job list, open the viewer and check the contours are drawn; then
audit the case's own RTSTRUCT with ``hn-rt`` from the scan page and read the audit table.

The stack is the embedded default that ``make run`` starts: SQLite database, the SQLite
Celery broker and one real worker subprocess, running the real engine. Screenshots go to
``test-output/`` (git-ignored).

Prerequisites: chromium + chromedriver (/usr/bin), ../shared/data, the shipped models
``hn-oar`` and ``hn-rt``. Missing ones skip the test, or fail it when CI=true.
"""

from __future__ import annotations

import shutil

import pytest

from tests.browser.pages import screenshot, wait_for
from tests.stack import Stack, data_dir, require

pytestmark = pytest.mark.browser

JOB_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-stack")
    running = Stack(
        root,
        database_url=f"sqlite:///{root / 'db.sqlite3'}",
        broker_url=f"sqla+sqlite:///{root / 'celery-broker.sqlite3'}",
    )
    try:
        yield running.start()
    finally:
        running.stop()


def wait_for_job(driver, job_id: str) -> set[str]:
    """Watch the job list until the job's badge says succeeded or failed; every status seen."""
    row = f"tr[data-job-id='{job_id}']"
    statuses: set[str] = set()

    def finished():  # read in one script: the list is re-rendered while it is polled
        status = driver.execute_script(
            "const b = document.querySelector(arguments[0]); return b ? b.dataset.status : null;", f"{row} .badge"
        )
        if status:
            statuses.add(status)
        return statuses & {"succeeded", "failed"}

    wait_for(finished, JOB_TIMEOUT_S, "the job to finish", interval_s=1)
    return statuses


def test_upload_and_view_contours(stack, driver, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    case = data_dir("openkbp_dicom", "pt_106")
    folder = tmp_path / "pt_106"
    shutil.copytree(case, folder)
    username, password = stack.create_account()

    # Nothing without logging in: the job list sends us to the login page.
    driver.get(f"{stack.base_url}/jobs/")
    assert "/accounts/login/" in driver.current_url
    driver.find_element(By.ID, "id_username").send_keys(username)
    driver.find_element(By.ID, "id_password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
    # (the login page's own URL, /accounts/login/?next=/jobs/, also ends with /jobs/)
    wait_for(
        lambda: "/accounts/login/" not in driver.current_url and driver.current_url.endswith("/jobs/"),
        30,
        "the job list after login",
    )

    # Upload the DICOM folder (webkitdirectory input).
    driver.get(f"{stack.base_url}/upload/")
    driver.find_element(By.ID, "folder-input").send_keys(str(folder))
    selection = driver.find_element(By.ID, "selection").text
    assert "pt_106" in selection and "129 files" in selection, selection
    driver.find_element(By.ID, "upload-button").click()
    wait_for(
        lambda: "/scans/" in driver.current_url or driver.find_element(By.ID, "upload-error").text,
        180,
        "the upload to finish",
    )
    assert "/scans/" in driver.current_url, driver.find_element(By.ID, "upload-error").text
    scan_url = driver.current_url

    # The pre-flight report comes before anything is queued: one usable CT series, chosen.
    rows = driver.find_elements(By.CSS_SELECTOR, "#series-table tbody tr")
    assert len(rows) == 1 and "128 × 128 × 128" in rows[0].text and "usable" in rows[0].text, rows[0].text
    assert rows[0].find_element(By.CSS_SELECTOR, "input[type=radio]").is_selected()
    screenshot(driver, "preflight.png")
    models = [o.get_attribute("value") for o in driver.find_elements(By.CSS_SELECTOR, "#id_model option")]
    require("hn-oar" in models, "model hn-oar is not shipped (engine/weights)")
    Select(driver.find_element(By.ID, "id_model")).select_by_value("hn-oar")
    driver.find_element(By.ID, "delineate-button").click()
    wait_for(lambda: "/jobs/?new=" in driver.current_url, 60, "the job list after queueing")
    job_id = driver.current_url.split("new=")[1]

    # The job list shows live status until the job is done.
    row = f"tr[data-job-id='{job_id}']"
    statuses = wait_for_job(driver, job_id)
    screenshot(driver, "jobs.png")
    assert "succeeded" in statuses, driver.execute_script("return document.querySelector(arguments[0]).innerText;", row)
    links = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0] + ' a'), a => a.getAttribute('href'));", row
    )
    assert f"/api/jobs/{job_id}/rtstruct.dcm" in links, links

    # The viewer draws the CT and one trace per visible structure on the slice.
    driver.get(f"{stack.base_url}/jobs/{job_id}/")
    plot = driver.find_element(By.ID, "plot")
    wait_for(lambda: plot.get_attribute("data-index"), 60, "the first slice in the viewer")
    found = driver.execute_script(
        "const rows = document.querySelectorAll('#structures-table tbody tr:not(.absent)');"
        "return Array.from(rows, r => r.dataset.structure);"
    )
    assert found, "the model delineated no structure on this case (all volumes are 0)"
    # The RTSTRUCT is offered with its round-trip check, and the SEG beside it.
    check = driver.find_element(By.ID, "rtstruct-check").text
    assert "Round-trip check passed" in check and "required 0.98" in check, check
    assert driver.find_element(By.ID, "download-seg").get_attribute("href").endswith(f"/api/jobs/{job_id}/seg.dcm")
    if not plot.get_attribute("data-structures"):  # the opening slice misses them all: go to one
        driver.find_element(By.CSS_SELECTOR, f"tr[data-structure='{found[0]}'] button").click()
    drawn = wait_for(lambda: plot.get_attribute("data-structures"), 60, "contours in the viewer")
    traces = driver.execute_script(
        "return document.getElementById('plot').data.map(t => [t.type, t.name, t.meta ? t.meta.kind : null]);"
    )
    assert traces[0][:2] == ["heatmap", "CT"]
    fills = [name for kind, name, meta in traces if meta == "fill"]
    outlines = [name for kind, name, meta in traces if meta == "outline"]
    assert fills and fills == drawn.split(",")
    assert len(outlines) == len(fills)
    screenshot(driver, "viewer_axial.png")

    # Physical aspect ratio: the y axis is anchored to x at scale 1 (axes in mm).
    yaxis = driver.execute_script("return document.getElementById('plot').layout.yaxis;")
    assert yaxis["scaleanchor"] == "x" and yaxis["scaleratio"] == 1

    # Window presets change the CT trace's display range.
    driver.find_element(By.CSS_SELECTOR, "button.preset[data-w='1800']").click()
    zrange = driver.execute_script("const t = document.getElementById('plot').data[0]; return [t.zmin, t.zmax];")
    assert zrange == [400 - 900, 400 + 900]

    # Hiding a structure removes its traces.
    first = fills[0]
    driver.find_element(By.CSS_SELECTOR, f"tr[data-structure='{first}'] input[type=checkbox]").click()
    wait_for(lambda: first not in (plot.get_attribute("data-structures") or "").split(","), 10, f"{first} hidden")

    # Other planes and scrolling.
    driver.find_element(By.CSS_SELECTOR, "button.plane[data-plane='coronal']").click()
    wait_for(lambda: plot.get_attribute("data-plane") == "coronal", 30, "the coronal plane")
    index = int(plot.get_attribute("data-index"))
    driver.execute_script(
        "const wheel = new WheelEvent('wheel', {deltaY: -100, bubbles: true, cancelable: true});"
        "document.getElementById('plot').dispatchEvent(wheel);"
    )
    wait_for(lambda: int(plot.get_attribute("data-index")) == index + 1, 30, "the next slice after scrolling")
    screenshot(driver, "viewer_coronal.png")
    errors = driver.find_element(By.ID, "viewer-error").text
    assert not errors, errors

    # The upload came with its planning RTSTRUCT: the scan page offers to audit those contours.
    driver.get(scan_url)
    audit_models = [o.get_attribute("value") for o in driver.find_elements(By.CSS_SELECTOR, "#id_audit_model option")]
    require("hn-rt" in audit_models, "model hn-rt with its critic is not shipped (engine/weights)")
    Select(driver.find_element(By.ID, "id_audit_model")).select_by_value("hn-rt")
    driver.find_element(By.ID, "audit-button").click()
    wait_for(lambda: "/jobs/?new=" in driver.current_url, 60, "the job list after queueing the audit")
    audit_id = driver.current_url.split("new=")[1]
    assert "succeeded" in wait_for_job(driver, audit_id)
    driver.get(f"{stack.base_url}/jobs/{audit_id}/")
    rois = wait_for(
        lambda: driver.execute_script(
            "return Array.from(document.querySelectorAll('#audit-table tbody tr[data-roi]'), r => r.dataset.roi);"
        ),
        60,
        "the audit table",
    )
    # pt_106's structure set holds the organs and PTVs hn-rt delineates; each is scored and compared.
    assert {"SpinalCord", "Mandible", "PTV70"} <= set(rois), rois
    cells = driver.execute_script(
        "const r = document.querySelector(\"#audit-table tr[data-roi='Mandible']\");"
        "return Array.from(r.cells, c => c.innerText);"
    )
    check, dice, msd = cells[2], float(cells[3]), float(cells[4])
    assert not check.startswith("–") and 0.0 <= dice <= 1.0 and msd >= 0.0, cells
    # The check says whether the audit acts on it for this structure, from which threshold,
    # and the critic's own score; the shipped card is calibrated for the shipped weights.
    assert ("(flags below " in check or "(shown only" in check) and "quality " in check, cells
    assert "not calibrated" not in check, cells
    plot = driver.find_element(By.ID, "plot")
    wait_for(lambda: plot.get_attribute("data-index"), 60, "the model's delineation beside the audit table")
    driver.execute_script("document.getElementById('audit').scrollIntoView();")
    screenshot(driver, "viewer_audit.png")
    errors = driver.find_element(By.ID, "viewer-error").text
    assert not errors, errors


def test_abdominal_ct_warns_before_its_rtstruct_is_downloaded(stack, driver, tmp_path):
    """The totalseg example (an abdominal CT, 512 x 512 x 20) through the browser with
    hn-rt: the scan page says before the job that the series is too short for a head and
    neck CT, the job is "Succeeded with warnings", the viewer shows the banner with the
    reasons and marks implausible structures, and the RTSTRUCT downloads only once the
    warning's box is ticked (the API refuses it without the acknowledgement: 409).
    Runs after test_upload_and_view_contours, whose login the driver keeps."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    folder = tmp_path / "abdomen"
    shutil.copytree(data_dir("totalseg_example", "example_ct_dicom"), folder)
    driver.get(f"{stack.base_url}/upload/")
    if "/accounts/login/" in driver.current_url:  # run on its own: log in first
        username, password = stack.create_account()
        driver.find_element(By.ID, "id_username").send_keys(username)
        driver.find_element(By.ID, "id_password").send_keys(password)
        driver.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
        wait_for(lambda: "/upload/" in driver.current_url and "/accounts/" not in driver.current_url, 30, "upload page")
    driver.find_element(By.ID, "folder-input").send_keys(str(folder))
    driver.find_element(By.ID, "upload-button").click()
    wait_for(lambda: "/scans/" in driver.current_url or driver.find_element(By.ID, "upload-error").text, 180, "upload")
    assert "/scans/" in driver.current_url, driver.find_element(By.ID, "upload-error").text

    # Before any job: the pre-flight already names the mismatch, from the headers.
    notes = driver.find_element(By.ID, "domain-notes").text
    assert "hn-rt" in notes and "covers 40 mm from top to bottom" in notes, notes
    Select(driver.find_element(By.ID, "id_model")).select_by_value("hn-rt")
    driver.find_element(By.ID, "delineate-button").click()
    wait_for(lambda: "/jobs/?new=" in driver.current_url, 60, "the job list after queueing")
    job_id = driver.current_url.split("new=")[1]
    assert "succeeded" in wait_for_job(driver, job_id)
    badge = driver.find_element(By.CSS_SELECTOR, f"tr[data-job-id='{job_id}'] .badge").text
    assert badge == "Succeeded with warnings", badge

    driver.get(f"{stack.base_url}/jobs/{job_id}/")
    wait_for(lambda: driver.find_element(By.ID, "job-status").text == "Succeeded with warnings", 30, "the badge")
    banner = driver.find_element(By.ID, "domain-warning").text
    assert "hn-rt delineates head and neck CT scans" in banner and "covers 40 mm" in banner, banner
    wait_for(lambda: driver.find_elements(By.ID, "download-rtstruct"), 60, "the download links")
    marked = driver.execute_script(
        "return Array.from(document.querySelectorAll('#structures-table tr.implausible'), r => r.dataset.structure);"
    )
    job = driver.execute_script("return window.fetch(arguments[0]).then(r => r.json());", f"/api/jobs/{job_id}/")
    assert job["outside_domain"] and set(marked) == set(job["domain"]["structures"]), (marked, job["domain"])
    screenshot(driver, "viewer_outside_domain.png")

    link = driver.find_element(By.ID, "download-rtstruct")
    href = link.get_attribute("href")
    assert href.endswith("?acknowledge=outside-domain"), href
    plain = driver.execute_script("return window.fetch(arguments[0]).then(r => r.status);", href.split("?")[0])
    assert plain == 409
    link.click()  # not ticked: the page stops the download and says why
    alert = wait_for(lambda: _alert(driver), 10, "the alert")
    assert "I have read this warning" in alert.text
    alert.accept()
    driver.find_element(By.ID, "acknowledge-domain").click()
    status = driver.execute_script("return window.fetch(arguments[0]).then(r => r.status);", href)
    assert status == 200


def _alert(driver):
    from selenium.common.exceptions import NoAlertPresentException

    try:
        return driver.switch_to.alert
    except NoAlertPresentException:
        return None
