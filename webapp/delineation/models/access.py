"""The access log: who did what to which patient data (see ``webapp.delineation.models``)."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class AccessEvent(models.Model):
    """One access to patient data: who did what to which scan, job or patient, when, from where.

    Holds ids only: never a scan's name or an uploaded file's name (either can hold a
    patient's name), nor any pixel data. ``filename`` is the name of a job output as
    stored (``rtstruct.dcm``), not the name the download was served under; ``team`` the
    team a scan was shared with or unshared from. The row stays
    when its user or object is deleted (``username`` and ``object_id`` keep who and what).
    A ``purge`` of this log itself (``retention.purge_access_log``) is recorded with no user and
    no object id, and ``count``: how many events it deleted.
    """

    class Action(models.TextChoices):
        UPLOAD = "upload", "Upload"
        VIEW = "view", "View"
        DOWNLOAD = "download", "Download"
        DELETE = "delete", "Delete"
        QUEUE = "queue", "Queue job"
        SHARE = "share", "Share with a team"
        UNSHARE = "unshare", "Stop sharing with a team"
        PURGE = "purge", "Delete old events of this log"
        # A job's result sent to a DICOM destination ("Send to", API): ``filename`` is the output sent.
        SEND = "send", "Send to a DICOM destination"
        # A download of a job outside its model's domain, after the warning was acknowledged.
        ACKNOWLEDGE = "acknowledge", "Acknowledged a domain warning"
        # The DICOM node refused an association: the calling AE title is not a configured peer.
        DICOM_REJECTED = "dicom_rejected", "DICOM association rejected"
        # A job's contours corrected (a new revision; ``filename``: its label map) or approved.
        EDIT = "edit", "Edit contours"
        APPROVE = "approve", "Approve contours"

    class ObjectType(models.TextChoices):
        SCAN = "scan", "Scan"
        JOB = "job", "Job"
        PATIENT = "patient", "Patient"
        ACCESS_LOG = "log", "Access log"
        DICOM_NODE = "dicom", "DICOM node"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="access_events"
    )
    username = models.CharField(max_length=150, blank=True, default="")  # empty: the system (retention purge)
    action = models.CharField(max_length=16, choices=Action.choices)
    object_type = models.CharField(max_length=8, choices=ObjectType.choices)
    object_id = models.UUIDField(null=True, blank=True)  # null: the access log itself (a purge)
    # The owner of the scan or job, so that an owner reads every access to their data.
    object_owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    filename = models.CharField(max_length=100, blank=True, default="")
    # Share and unshare: the team's name then (it stays when the team is renamed or deleted).
    team = models.CharField(max_length=150, blank=True, default="")
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    # A DICOM association: the calling AE title (an upload by a peer, or a rejected association).
    calling_ae = models.CharField(max_length=16, blank=True, default="")
    count = models.PositiveIntegerField(null=True, blank=True)  # a purge: the events it deleted
    created = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        what = f"{self.count} event(s)" if self.action == self.Action.PURGE else self.object_id
        return f"{self.username or 'system'} {self.action} {self.object_type} {what}"
