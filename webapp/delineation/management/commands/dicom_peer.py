"""Configure the DICOM node's peers (docs/dicom-networking.md):

    python manage.py dicom_peer add CT_SIM --ae-title CTSIM1 --host 10.0.0.5 --port 104 --owner physician \\
        [--model hn-oar] [--send-results] [--deidentify | --no-deidentify]
    python manage.py dicom_peer list
    python manage.py dicom_peer remove CT_SIM

Only the AE titles of configured peers may associate with the node; what a peer sends
belongs to its owner. Peers are also edited in the Django admin.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from webapp.delineation import engine_client
from webapp.delineation.dicom.models import DicomPeer


class Command(BaseCommand):
    help = "Add, list or remove the DICOM peers allowed to send to the node."

    def add_arguments(self, parser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="Allow a peer (its calling AE title) to send to the node.")
        add.add_argument("name", help="A name for the peer (e.g. CT_SIM, PACS, ECLIPSE).")
        add.add_argument(
            "--ae-title", required=True, help="The peer's AE title (the calling AE title of its associations)."
        )
        add.add_argument("--host", required=True, help="The peer's host name or address.")
        add.add_argument("--port", required=True, type=int, help="The port the peer's own SCP listens on.")
        add.add_argument("--owner", required=True, help="The user who owns what the peer sends.")
        add.add_argument("--model", default="", help="Queue a job with this model for every complete image series.")
        add.add_argument("--send-results", action="store_true", help="Send each job's RTSTRUCT back to the peer.")
        add.add_argument("--tls", action="store_true", help="Send results to the peer over TLS (DICOM_NODE_TLS_*).")
        add.add_argument("--send-seg", action="store_true", help="Also send each job's DICOM SEG.")
        add.add_argument("--results-to", default="", help="Send the results to this other peer instead of back.")
        add.add_argument(
            "--stow-url", default="", help="Send results by DICOMweb STOW-RS to this service root instead of C-STORE."
        )
        add.add_argument(
            "--deidentify",
            action="store_true",
            default=None,
            help="De-identify what the peer sends (default: DELINEO_DEIDENTIFY_DEFAULT).",
        )
        add.add_argument("--no-deidentify", dest="deidentify", action="store_false")
        sub.add_parser("list", help="List the peers.")
        remove = sub.add_parser("remove", help="Remove a peer (what it sent stays with its owner).")
        remove.add_argument("name")

    def handle(self, *args, action: str, **options) -> None:
        getattr(self, f"_{action}")(**options)

    def _add(
        self,
        name: str,
        ae_title: str,
        host: str,
        port: int,
        owner: str,
        model: str,
        send_results: bool,
        deidentify: bool | None,
        stow_url: str,
        send_seg: bool,
        results_to: str,
        tls: bool,
        **options,
    ) -> None:
        user = get_user_model().objects.filter(username=owner).first()
        if user is None:
            raise CommandError(f"There is no user {owner!r}; create the account first.")
        if model and model not in engine_client.available_models():
            known = ", ".join(engine_client.available_models())
            raise CommandError(f"Unknown model {model!r}; models on this server: {known}.")
        if send_results and not model:
            raise CommandError("--send-results sends the results of the jobs --model queues: give --model too.")
        if (send_seg or results_to) and not send_results:
            raise CommandError("--send-seg and --results-to say how results are sent: give --send-results too.")
        destination = DicomPeer.objects.filter(name=results_to).first() if results_to else None
        if results_to and destination is None:
            raise CommandError(f"There is no DICOM peer named {results_to!r} to send results to; add it first.")
        peer = DicomPeer(
            name=name,
            ae_title=ae_title,
            host=host,
            port=port,
            owner=user,
            model_name=model,
            send_results=send_results,
            stow_url=stow_url,
            send_seg=send_seg,
            tls=tls,
            results_to=destination,
            deidentify=settings.DELINEO_DEIDENTIFY_DEFAULT if deidentify is None else deidentify,
        )
        try:
            peer.full_clean()
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None
        peer.save()
        self.stdout.write(self.style.SUCCESS(f"Added {self._describe(peer)}"))

    def _list(self, **options) -> None:
        peers = DicomPeer.objects.select_related("owner")
        if not peers:
            self.stdout.write("No DICOM peer is configured: the node accepts no association.")
        for peer in peers:
            self.stdout.write(self._describe(peer))

    def _remove(self, name: str, **options) -> None:
        deleted, _ = DicomPeer.objects.filter(name=name).delete()
        if not deleted:
            raise CommandError(f"There is no DICOM peer named {name!r}.")
        self.stdout.write(f"Removed {name}; what it sent stays with its owner.")

    @staticmethod
    def _describe(peer: DicomPeer) -> str:
        rule = f"model {peer.model_name}" if peer.model_name else "no job"
        if peer.send_results:
            what = "RTSTRUCT and SEG" if peer.send_seg else "RTSTRUCT"
            to = peer.results_to
            if to is not None:
                rule += f", {what} sent to {to.name}"
            else:
                rule += f", {what} sent by STOW-RS to {peer.stow_url}" if peer.stow_url else f", {what} sent back"
        deid = ", de-identified" if peer.deidentify else ""
        where = f"AE title {peer.ae_title} at {peer.host}:{peer.port}"
        return f"{peer.name}: {where}, owner {peer.owner.get_username()}, {rule}{deid}"
