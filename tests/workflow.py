"""Steps of the API workflows that several test modules take: upload a scan, ask for a
propagation, correct a contour, read a download back. The fixtures built from them
(``planning``, ``daily``, ``alice_propagation``) are in ``tests/conftest.py``."""

from __future__ import annotations

import io

import numpy as np
import pydicom
from django.core.files.uploadedfile import SimpleUploadedFile

from webapp.delineation import rules
from webapp.delineation.models import Scan


def upload(client, data: bytes, filename: str, **fields) -> dict:
    """POST ``data`` as the file ``filename`` to /api/scans/; the scan created (201)."""
    response = client.post("/api/scans/", {"file": SimpleUploadedFile(filename, data), **fields}, format="multipart")
    assert response.status_code == 201, response.content
    return response.json()


def rtstruct_uid(scan: dict) -> str:
    """The SOP Instance UID of the one RTSTRUCT in the upload of ``scan``."""
    (rs,) = rules.structure_sets(scan["preflight"])
    return rs["sop_instance_uid"]


def propagate(client, daily_id, planning_id, capture=None, **fields):
    """POST a dual-head propagation (``fields`` may change the model and give the contours);
    with ``capture`` (``django_capture_on_commit_callbacks``) the job runs as it commits."""
    payload = {"scan": daily_id, "planning_scan": planning_id, "kind": "propagate", "model": "dual-head", **fields}
    if capture is None:
        return client.post("/api/jobs/", payload, format="json")
    with capture(execute=True):
        return client.post("/api/jobs/", payload, format="json")


def edit(client, job_id, **body):
    """POST the edit ``body`` (``webapp.delineation.revisions``) to the job."""
    return client.post(f"/api/jobs/{job_id}/edits/", body, format="json")


def content(response) -> bytes:
    """The body of a streamed download."""
    return b"".join(response.streaming_content)


def rtstruct_masks(data: bytes, scan_id: str) -> dict[str, np.ndarray]:
    """The ROIs of the RTSTRUCT ``data`` rasterised by the engine's importer on the DICOM
    series of the scan ``scan_id``: bool (I, J, K) per ROI name."""
    from engine.io.dicom_series import read_series
    from engine.io.rtstruct_import import import_rtstruct

    series = read_series(Scan.objects.get(pk=scan_id).engine_input)
    return {roi.name: roi.mask for roi in import_rtstruct(pydicom.dcmread(io.BytesIO(data)), series)}
