"""The Celery application: ``celery -A webapp worker`` (settings from Django, namespace CELERY_)."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("webapp")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def start_job_reaper(sender=None, **kwargs) -> None:
    """The job reaper of the SQLite broker (webapp/delineation/reaper.py), in the worker's main process."""
    from django.conf import settings

    if settings.DELINEO_REAPER:
        from webapp.delineation.reaper import start_in_worker

        start_in_worker(settings.DELINEO_REAPER_INTERVAL)
