from django.apps import AppConfig


class DelineationConfig(AppConfig):
    name = "webapp.delineation"
    label = "delineation"
    verbose_name = "Delineation"
    default_auto_field = "django.db.models.BigAutoField"
