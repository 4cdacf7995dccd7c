"""Create the local account on first run and print its credentials once.

``make run`` calls it after ``migrate``. The password is random, shown only when the
account is created and stored only as a hash; on later runs the command says the
account exists. Lost it? ``python manage.py changepassword <username>``.
"""

from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction


class Command(BaseCommand):
    help = "Create the local user account (random password, printed once) if it does not exist."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default="physician", help="Account name (default: physician).")
        parser.add_argument("--superuser", action="store_true", help="Also give access to the admin site (/admin/).")

    def handle(self, *args, username: str, superuser: bool, **options) -> None:
        User = get_user_model()
        with transaction.atomic():
            if User.objects.filter(username=username).exists():
                self.stdout.write(
                    f"Local account '{username}' already exists; its password was printed when it was created "
                    f"(reset it with: python manage.py changepassword {username})."
                )
                return
            password = secrets.token_urlsafe(12)
            if superuser:
                User.objects.create_superuser(username=username, password=password, email="")
            else:
                User.objects.create_user(username=username, password=password)
        self.stdout.write(self.style.SUCCESS("Created the local account. Sign in with:"))
        self.stdout.write(f"  username: {username}")
        self.stdout.write(f"  password: {password}")
        self.stdout.write("This password is shown only once; keep it somewhere safe.")
