from django.contrib import admin

from webapp.delineation.models import Job, Scan


@admin.register(Scan)
class ScanAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "input_kind", "file_count", "size_bytes", "created")
    list_filter = ("input_kind",)
    search_fields = ("name", "owner__username", "id")
    readonly_fields = ("id", "input_path", "created")


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "scan", "owner", "model_name", "status", "stage", "progress", "created", "finished")
    list_filter = ("status", "model_name")
    search_fields = ("id", "scan__name", "owner__username")
    readonly_fields = ("id", "created", "started", "finished", "timings", "weights_sha256", "result_dir")
