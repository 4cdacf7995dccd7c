from django.contrib import admin

from webapp.delineation.models import AccessEvent, DicomPeer, DicomReceipt, Job, ResultSend, Scan, Team


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    """Teams are made here: a name and its members. Owners then share scans with their teams."""

    list_display = ("name", "member_count")
    search_fields = ("name", "members__username")
    filter_horizontal = ("members",)

    @admin.display(description="members")
    def member_count(self, team: Team) -> int:
        return team.members.count()


@admin.register(Scan)
class ScanAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "input_kind", "file_count", "size_bytes", "created")
    list_filter = ("input_kind", "shared_with")
    search_fields = ("name", "owner__username", "id")
    # Sharing is the owner's decision, made on the scan page or the API, where it is audited.
    readonly_fields = ("id", "input_path", "created", "shared_with")


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "scan", "owner", "model_name", "status", "stage", "progress", "created", "finished")
    list_filter = ("status", "model_name")
    search_fields = ("id", "scan__name", "owner__username")
    readonly_fields = ("id", "created", "started", "finished", "timings", "weights_sha256", "result_dir")


@admin.register(AccessEvent)
class AccessEventAdmin(admin.ModelAdmin):
    """The access log, read-only: nobody adds, changes or deletes an entry here."""

    list_display = (
        "created",
        "username",
        "action",
        "object_type",
        "object_id",
        "filename",
        "team",
        "client_ip",
        "calling_ae",
        "count",
    )
    list_filter = ("action", "object_type")
    search_fields = ("username", "object_id")
    date_hierarchy = "created"

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(DicomPeer)
class DicomPeerAdmin(admin.ModelAdmin):
    """The peers allowed to associate with the DICOM node (also ``manage.py dicom_peer``)."""

    list_display = (
        "name", "ae_title", "host", "port", "owner", "model_name", "send_results", "send_seg", "results_to", "stow_url",
        "deidentify",
    )  # fmt: skip
    search_fields = ("name", "ae_title", "host", "owner__username")


@admin.register(DicomReceipt)
class DicomReceiptAdmin(admin.ModelAdmin):
    """Studies being received, and what became of them: read-only (the node writes them)."""

    list_display = ("created", "calling_ae", "owner", "state", "instances", "size_bytes", "last_received", "scan")
    list_filter = ("state",)
    readonly_fields = [f.name for f in DicomReceipt._meta.fields]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ResultSend)
class ResultSendAdmin(admin.ModelAdmin):
    list_display = ("created", "job", "destination", "filename", "state", "status", "attempts", "finished")
    list_filter = ("state",)
    readonly_fields = [f.name for f in ResultSend._meta.fields]

    def has_add_permission(self, request, obj=None) -> bool:
        return False
