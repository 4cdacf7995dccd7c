"""Real DICOM peers for the node's tests: a free loopback port, the openkbp DICOM cases,
and pynetdicom SCUs. dcmtk's tools (echoscu, storescu) are used where installed by
``make system-packages``."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
from pynetdicom import AE, build_context
from pynetdicom.sop_class import Verification

from webapp.delineation.dicom import conformance

REPO = Path(__file__).resolve().parent.parent
OPENKBP_DICOM = REPO.parent / "shared" / "data" / "openkbp_dicom"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_node(quiet_s: float) -> Iterator:
    """The node (AE title DELINEO) on a free loopback port with its series assembly, in
    threads of this process; stopped on exit."""
    from webapp.delineation.dicom.assembly import Assembly
    from webapp.delineation.dicom.scp import Node

    assembly = Assembly(quiet_s=quiet_s, poll_s=0.2)
    node = Node(assembly, "DELINEO", "127.0.0.1", free_port(), timeout_s=20)
    node.start()
    assembly.start()
    try:
        yield node
    finally:
        node.stop()
        assembly.stop()


def case_files(case: str = "pt_104") -> tuple[list[Path], Path]:
    """(CT slice files sorted by name, the RTSTRUCT) of an openkbp DICOM case."""
    folder = OPENKBP_DICOM / case
    images = sorted(folder.glob("image*.dcm"))
    (rtstruct,) = folder.glob("rtss*.dcm")
    return images, rtstruct


def scu(calling: str, sop_classes=(), transfer_syntaxes=None) -> AE:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for uid in sop_classes:
        ae.requested_contexts.append(build_context(uid, transfer_syntaxes or conformance.TRANSFER_SYNTAXES[:2]))
    ae.add_requested_context(Verification)
    return ae


def send(calling: str, port: int, paths: list[Path], called: str = "DELINEO") -> list[int]:
    """C-STORE each file in one association, released at the end; the statuses in order."""
    datasets = [pydicom.dcmread(p) for p in paths]
    ae = scu(calling, sorted({str(ds.SOPClassUID) for ds in datasets}))
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "association refused"
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def need_dcmtk() -> None:
    """dcmtk's storescu, storescp and echoscu (make system-packages); skipped without, failed under CI=true."""
    from tests.stack import require

    require(all(shutil.which(t) for t in ("storescu", "storescp", "echoscu")),
            "dcmtk (storescu, storescp, echoscu) is installed by make system-packages")  # fmt: skip
