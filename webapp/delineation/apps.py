import os

from django.apps import AppConfig
from django.db.backends.signals import connection_created


def _private_sqlite_file(sender, connection, **kwargs) -> None:
    """The SQLite database file (and its -wal and -shm companions) is made 600 when it is
    opened: it holds API tokens and session keys (docs/security.md, "Patient data on disk")."""
    if connection.vendor != "sqlite":
        return
    name = str(connection.settings_dict.get("NAME") or "")
    if not name or name == ":memory:" or name.startswith("file:"):
        return
    for path in (name, f"{name}-wal", f"{name}-shm"):
        try:
            if os.stat(path).st_mode & 0o777 != 0o600:
                os.chmod(path, 0o600)
        except OSError:  # not there (yet), or another user's: nothing to tighten here
            pass


class DelineationConfig(AppConfig):
    name = "webapp.delineation"
    label = "delineation"
    verbose_name = "Delineation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        connection_created.connect(_private_sqlite_file, dispatch_uid="delineo-private-sqlite-file")
