"""An Orthanc PACS for tests, started by the test with its own configuration and storage on
free loopback ports (``apt-get install orthanc orthanc-dicomweb``, ``make system-packages``),
driven over its REST API."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.dicom_peers import free_port

# /usr/sbin is not on every user's PATH.
ORTHANC = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@dataclass
class Orthanc:
    url: str
    dicom_port: int
    ae_title: str
    process: subprocess.Popen

    def get(self, path: str):
        response = requests.get(f"{self.url}{path}", timeout=60)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, data=None, json_body=None, timeout: float = 300):
        response = requests.post(f"{self.url}{path}", data=data, json=json_body, timeout=timeout)
        response.raise_for_status()
        return response.json() if response.content else None

    def upload(self, paths) -> list[dict]:
        return [self.post("/instances", data=Path(p).read_bytes()) for p in paths]

    def find(self, level: str, query: dict) -> list[str]:
        return self.post("/tools/find", json_body={"Level": level, "Query": query})


def start_orthanc(work: Path, modalities: dict[str, list]) -> Orthanc:
    """Orthanc with AE title ORTHANC, its DICOM and HTTP ports free on 127.0.0.1, the
    ``modalities`` it may send to (name -> [AE title, host, port]), the DICOMweb plugin when
    installed, no authentication (loopback only); stop it with ``stop_orthanc``."""
    work.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "delineo-test",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomModalities": modalities,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "DicomCheckCalledAet": False,
        "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    path = work / "orthanc.json"
    path.write_text(json.dumps(config))
    log = open(work / "orthanc.log", "wb")
    process = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT)
    orthanc = Orthanc(f"http://127.0.0.1:{http_port}", dicom_port, "ORTHANC", process)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited: {(work / 'orthanc.log').read_text()[-2000:]}")
        try:
            orthanc.get("/system")
            return orthanc
        except requests.RequestException:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("Orthanc did not start within 60 s")


def stop_orthanc(orthanc: Orthanc) -> None:
    orthanc.process.terminate()
    try:
        orthanc.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        orthanc.process.kill()


def need_orthanc() -> None:
    """Orthanc and its DICOMweb plugin (make system-packages); skipped without, failed under CI=true."""
    from tests.stack import require

    require(
        ORTHANC is not None and DICOMWEB_PLUGIN.exists(),
        "Orthanc and orthanc-dicomweb are installed by make system-packages",
    )
