"""Peers of the DICOM node: ``manage.py dicom_peer add/list/remove``, the admin, and who
may associate (webapp/delineation/dicom/peers.py): a configured AE title from its host;
anything else is rejected and written to the access log without patient data."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from tests.dicom_peers import free_port, scu
from webapp.delineation.dicom import peers
from webapp.delineation.dicom.models import DicomPeer
from webapp.delineation.dicom.scp import Node
from webapp.delineation.models import AccessEvent

pytestmark = pytest.mark.django_db


def add(*args: str) -> str:
    from io import StringIO

    out = StringIO()
    call_command("dicom_peer", "add", *args, stdout=out)
    return out.getvalue()


def test_add_list_remove(alice, fake_engine, capsys):
    text = add("CT_SIM", "--ae-title", "CTSIM1", "--host", "127.0.0.1", "--port", "104", "--owner", "alice",
               "--model", "hn-oar", "--send-results")  # fmt: skip
    assert "CT_SIM: AE title CTSIM1 at 127.0.0.1:104, owner alice, model hn-oar, RTSTRUCT sent back" in text
    peer = DicomPeer.objects.get(name="CT_SIM")
    assert (peer.ae_title, peer.port, peer.owner) == ("CTSIM1", 104, alice)
    assert (peer.model_name, peer.send_results) == ("hn-oar", True)
    assert peer.deidentify is False  # the server's default, DELINEO_DEIDENTIFY_DEFAULT
    add("PACS", "--ae-title", "PACS", "--host", "pacs.local", "--port", "11112", "--owner", "alice", "--deidentify")
    assert DicomPeer.objects.get(name="PACS").deidentify is True
    call_command("dicom_peer", "list")
    listed = capsys.readouterr().out
    assert "CT_SIM:" in listed
    assert "PACS: AE title PACS at pacs.local:11112, owner alice, no job, de-identified" in listed
    call_command("dicom_peer", "remove", "PACS")
    assert list(DicomPeer.objects.values_list("name", flat=True)) == ["CT_SIM"]
    with pytest.raises(CommandError, match="no DICOM peer named 'PACS'"):
        call_command("dicom_peer", "remove", "PACS")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--owner", "nobody"], "no user 'nobody'"),
        (["--owner", "alice", "--ae-title", "A" * 17], "ae_title"),
        (["--owner", "alice", "--ae-title", "BAD\\AE"], "not an AE title"),
        (["--owner", "alice", "--port", "70000"], "port"),
        (["--owner", "alice", "--model", "no-such-model"], "Unknown model 'no-such-model'"),
        (["--owner", "alice", "--send-results"], "give --model too"),
        (["--owner", "alice", "--model", "hn-oar", "--send-seg"], "give --send-results too"),
        (
            ["--owner", "alice", "--model", "hn-oar", "--send-results", "--results-to", "NOWHERE"],
            "no DICOM peer named 'NOWHERE'",
        ),
    ],
)
def test_add_refuses_bad_values(alice, fake_engine, args, message):
    base = {"--ae-title": "CTSIM1", "--host": "127.0.0.1", "--port": "104"}
    switches = ("--send-results", "--send-seg")
    flags = [a for a in args if a in switches]
    valued = [a for a in args if a not in switches]
    merged = {**base, **dict(zip(valued[::2], valued[1::2], strict=True))}
    with pytest.raises(CommandError, match=message):
        add("CT_SIM", *[x for kv in merged.items() for x in kv], *flags)
    assert not DicomPeer.objects.exists()


def test_results_to_another_peer_with_the_seg(alice, fake_engine):
    add("TPS", "--ae-title", "ECLIPSE", "--host", "127.0.0.1", "--port", "105", "--owner", "alice")
    text = add("CT_SIM", "--ae-title", "CTSIM1", "--host", "127.0.0.1", "--port", "104", "--owner", "alice",
               "--model", "hn-oar", "--send-results", "--send-seg", "--results-to", "TPS")  # fmt: skip
    assert "model hn-oar, RTSTRUCT and SEG sent to TPS" in text
    peer = DicomPeer.objects.get(name="CT_SIM")
    assert peer.send_seg and peer.results_to == DicomPeer.objects.get(name="TPS")


def test_authorise_a_configured_ae_title_from_its_host(alice):
    peer = DicomPeer.objects.create(name="CT", ae_title="CTSIM1", host="127.0.0.1", port=104, owner=alice)
    assert peers.authorise("CTSIM1", "127.0.0.1") == peer
    assert not AccessEvent.objects.exists()


def test_unknown_ae_title_or_wrong_address_is_rejected_and_logged(alice, settings):
    DicomPeer.objects.create(name="CT", ae_title="CTSIM1", host="192.0.2.7", port=104, owner=alice)
    assert peers.authorise("INTRUDER", "127.0.0.1") is None
    assert peers.authorise("CTSIM1", "127.0.0.1") is None  # the right name from another machine
    fields = ("action", "object_type", "calling_ae", "client_ip", "object_id", "user")
    events = list(AccessEvent.objects.order_by("id").values(*fields))
    assert events == [
        dict(zip(fields, ("dicom_rejected", "dicom", ae, "127.0.0.1", None, None), strict=True))
        for ae in ("INTRUDER", "CTSIM1")
    ]
    settings.DICOM_NODE_CHECK_PEER_HOST = False  # behind NAT: the AE title alone
    assert peers.authorise("CTSIM1", "127.0.0.1") is not None


class PeersOnly:
    """The node's association check, with storage left out."""

    authorise = staticmethod(peers.authorise)

    def store(self, *args) -> int:
        return 0

    def association_ended(self, *args) -> None:
        pass


@pytest.mark.django_db(transaction=True)  # the node's threads use their own connections
def test_the_node_rejects_an_unconfigured_ae_title_and_logs_it(django_user_model):
    owner = django_user_model.objects.create_user("alice")
    DicomPeer.objects.create(name="CT", ae_title="CTSIM1", host="127.0.0.1", port=104, owner=owner)
    node = Node(PeersOnly(), "DELINEO", "127.0.0.1", free_port(), timeout_s=10)
    node.start()
    try:
        assoc = scu("CTSIM1").associate("127.0.0.1", node.port, ae_title="DELINEO")
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
        rejected = scu("OTHER").associate("127.0.0.1", node.port, ae_title="DELINEO")
        assert rejected.is_rejected
    finally:
        node.stop()
    (event,) = AccessEvent.objects.all()
    assert (event.action, event.calling_ae, event.client_ip) == ("dicom_rejected", "OTHER", "127.0.0.1")


def test_admin_edits_peers(admin_client, alice):
    assert admin_client.get("/admin/delineation/dicompeer/add/").status_code == 200
    response = admin_client.post(
        "/admin/delineation/dicompeer/add/",
        {"name": "TPS", "ae_title": "ECLIPSE", "host": "10.0.0.9", "port": "104", "owner": alice.pk, "model_name": ""},
    )
    assert response.status_code == 302, response.content
    assert DicomPeer.objects.get(name="TPS").ae_title == "ECLIPSE"
    assert admin_client.get("/admin/delineation/dicomreceipt/").status_code == 200
    assert admin_client.get("/admin/delineation/resultsend/").status_code == 200


def test_retention_removes_studies_that_never_became_a_scan(alice, django_capture_on_commit_callbacks):
    """A refused or never completed study is patient data on disk like a scan: the retention
    purge deletes it, its files too; a recent one stays."""
    from datetime import timedelta

    from django.utils import timezone

    from webapp.delineation import retention
    from webapp.delineation.dicom.assembly import original_dir
    from webapp.delineation.dicom.models import DicomReceipt

    peer = DicomPeer.objects.create(name="CT", ae_title="CTSIM1", host="127.0.0.1", port=104, owner=alice)
    old_time = timezone.now() - timedelta(days=40)
    old = DicomReceipt.objects.create(peer=peer, owner=alice, calling_ae="CTSIM1", study_key="a", state="failed")
    recent = DicomReceipt.objects.create(peer=peer, owner=alice, calling_ae="CTSIM1", study_key="b")
    DicomReceipt.objects.filter(pk=old.pk).update(created=old_time, last_received=old_time)
    for receipt in (old, recent):
        original_dir(receipt.id).mkdir(parents=True)
        (original_dir(receipt.id) / "x.dcm").write_bytes(b"patient data")
    assert retention.purge(30, dry_run=True).receipts == 1 and DicomReceipt.objects.count() == 2
    with django_capture_on_commit_callbacks(execute=True):
        result = retention.purge(30)
    assert result.receipts == 1
    assert list(DicomReceipt.objects.values_list("pk", flat=True)) == [recent.pk]
    assert not original_dir(old.id).exists() and (original_dir(recent.id) / "x.dcm").exists()
