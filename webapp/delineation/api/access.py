"""``/api/access-log/`` and ``/api/teams/``: who accessed your data, and your teams."""

from __future__ import annotations

from rest_framework import generics

from webapp.delineation.models import AccessEvent, Team
from webapp.delineation.serializers import AccessEventSerializer, TeamSerializer


class AccessEventList(generics.ListAPIView):
    """The access log, newest first (at most 1000 events): every event on the scans
    and jobs the requesting user owns, whoever acted (their team members' views and
    downloads included); staff see every event."""

    serializer_class = AccessEventSerializer
    LIMIT = 1000

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return AccessEvent.objects.none()
        events = AccessEvent.objects.all()
        user = self.request.user
        if not user.is_staff:
            events = events.filter(object_owner=user)
        return events[: self.LIMIT]


class TeamList(generics.ListAPIView):
    """The teams you are a member of, to share your scans with. An administrator creates teams
    and adds their members (Django admin, Teams)."""

    serializer_class = TeamSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Team.objects.none()
        return Team.objects.filter(members=self.request.user).prefetch_related("members")
