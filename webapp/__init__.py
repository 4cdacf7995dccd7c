"""Delineo web application (Django project). Loads the Celery app so tasks bind to it."""

from webapp.celery import app as celery_app

__all__ = ["celery_app"]
