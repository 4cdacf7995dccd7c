"""DICOM over TLS (webapp/delineation/dicom/tls.py): with a certificate the node accepts TLS
only, and with a CA only peers holding a certificate it signed; results go to a peer marked
``tls`` over TLS, its certificate checked. Certificates are made for the test with openssl."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.dicom_peers import free_port, scu
from tests.dicom_results import planned
from tests.stack import require
from webapp.delineation.dicom import send, tls
from webapp.delineation.dicom.models import DicomPeer
from webapp.delineation.dicom.scp import Node


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def pki(tmp_path) -> Path:
    """A CA, and certificates it signed for the node and for a peer (both at 127.0.0.1)."""
    require(shutil.which("openssl") is not None, "openssl is installed by make system-packages")
    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=Delineo test CA", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("node", "peer"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext", cwd=d)  # fmt: skip
    return d


@pytest.fixture
def tls_settings(settings, pki):
    settings.DICOM_NODE_TLS_CERT = str(pki / "node.pem")
    settings.DICOM_NODE_TLS_KEY = str(pki / "node.key")
    settings.DICOM_NODE_TLS_CA = str(pki / "ca.pem")
    return pki


class Anyone:
    def authorise(self, calling, address):
        return calling

    def store(self, *args) -> int:
        return 0

    def association_ended(self, *args) -> None:
        pass


def peer_context(pki: Path, with_certificate: bool = True):
    import ssl

    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
    if with_certificate:
        context.load_cert_chain(str(pki / "peer.pem"), str(pki / "peer.key"))
    return context


def test_the_node_accepts_tls_peers_with_a_certificate_only(tls_settings):
    pki = tls_settings
    node = Node(Anyone(), "DELINEO", "127.0.0.1", free_port(), timeout_s=10, ssl_context=tls.server_context())
    node.start()
    try:
        with_certificate = (peer_context(pki), "127.0.0.1")
        assoc = scu("CTSIM1").associate("127.0.0.1", node.port, ae_title="DELINEO", tls_args=with_certificate)
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
        plain = scu("CTSIM1").associate("127.0.0.1", node.port, ae_title="DELINEO")
        assert not plain.is_established  # plain TCP to a TLS node
        without = (peer_context(pki, with_certificate=False), "127.0.0.1")
        anonymous = scu("CTSIM1").associate("127.0.0.1", node.port, ae_title="DELINEO", tls_args=without)
        assert not anonymous.is_established  # TLS without a certificate the CA signed
    finally:
        node.stop()


@pytest.mark.django_db
def test_results_go_to_a_tls_peer_over_tls(tls_settings, succeeded_job, fast_retries,
                                            django_capture_on_commit_callbacks):  # fmt: skip
    import ssl

    from pynetdicom import AE, AllStoragePresentationContexts, evt

    pki, port, received = tls_settings, free_port(), []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    context.load_cert_chain(str(pki / "peer.pem"), str(pki / "peer.key"))
    context.verify_mode = ssl.CERT_REQUIRED  # the peer checks the node's certificate too
    ae = AE(ae_title="TPS1")
    ae.supported_contexts = AllStoragePresentationContexts
    handlers = [(evt.EVT_C_STORE, lambda event: received.append(event.dataset.SOPInstanceUID) or 0x0000)]
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers, ssl_context=context)
    try:
        record = planned(succeeded_job, port)
        DicomPeer.objects.filter(pk=record.peer_id).update(tls=False)
        with django_capture_on_commit_callbacks(execute=True):
            send.job_finished(succeeded_job)
        record.refresh_from_db()
        assert record.state == "failed" and not received  # plain DICOM to a TLS peer gets nowhere
        record2 = type(record).objects.create(job=succeeded_job, peer=record.peer, destination="TPS")
        DicomPeer.objects.filter(pk=record.peer_id).update(tls=True)
        with django_capture_on_commit_callbacks(execute=True):
            send.job_finished(succeeded_job)
        record2.refresh_from_db()
        assert (record2.state, record2.status) == ("sent", 0), record2.message
        assert len(received) == 1
    finally:
        server.shutdown()
