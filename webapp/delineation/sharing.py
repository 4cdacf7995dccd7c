"""Sharing a scan with a team, and stopping it: the owner's decision, recorded in the access log.

Used by the API (``POST /api/scans/{id}/share/``, ``.../unshare/``) and the scan page, so
both refuse the same things with the same messages. The caller has already found the scan
through ``Scan.objects.visible_to`` (another user's scan is a 404 before it gets here).
"""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest

from webapp.delineation import access_log
from webapp.delineation.models import AccessEvent, Scan, Team


class SharingRefused(Exception):
    """A share or unshare that is not done: ``message`` for the user, ``status`` 400 or 403."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def check_owner(scan: Scan, user, what: str) -> None:
    """Raise ``SharingRefused`` (403) unless ``user`` owns ``scan``; ``what``: "share", "delete", ..."""
    if not scan.is_owner(user):
        raise SharingRefused(
            f"Only the owner of this scan ({scan.owner.get_username()}) can {what} it; "
            "it is shared with you to view and download.",
            403,
        )


def _team_id(raw) -> int:
    try:
        return int(str(raw).strip())
    except ValueError:
        raise SharingRefused("Choose a team: send its id as 'team', a number (see GET /api/teams/).", 400) from None


def share(request: HttpRequest, scan: Scan, raw_team_id) -> Team:
    """Share ``scan`` with one of the requesting owner's teams; sharing it again changes nothing.

    Raises ``SharingRefused``: 403 when the user does not own the scan, 400 when the id is not
    one of the teams they are a member of.
    """
    check_owner(scan, request.user, "share")
    team_id = _team_id(raw_team_id)
    team = Team.objects.filter(members=request.user, pk=team_id).first()
    if team is None:
        raise SharingRefused(
            f"You are not a member of a team with id {team_id}: a scan can be shared only with one of your "
            "teams. An administrator adds you to teams.",
            400,
        )
    with transaction.atomic():
        if not scan.shared_with.filter(pk=team.pk).exists():
            scan.shared_with.add(team)
            access_log.record(request, AccessEvent.Action.SHARE, scan, team=team.name)
    return team


def unshare(request: HttpRequest, scan: Scan, raw_team_id) -> Team:
    """Stop sharing ``scan`` with a team: its members no longer find the scan, its jobs or files.

    Raises ``SharingRefused``: 403 when the user does not own the scan, 400 when the scan is
    not shared with that team. Works also for a team the owner has since left.
    """
    check_owner(scan, request.user, "stop sharing")
    team_id = _team_id(raw_team_id)
    with transaction.atomic():
        team = scan.shared_with.filter(pk=team_id).first()
        if team is None:
            raise SharingRefused(f"This scan is not shared with a team with id {team_id}.", 400)
        scan.shared_with.remove(team)
        access_log.record(request, AccessEvent.Action.UNSHARE, scan, team=team.name)
    return team
