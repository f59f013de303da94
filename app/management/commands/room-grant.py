"""``manage.py room-grant USER ROOMS [--read-only]``: let a user be issued tokens for rooms."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from app.models import RoomGrant


class Command(BaseCommand):
    help = (
        "Let USER be issued room tokens (POST /rooms/<room>/token) for the rooms whose whole name"
        " matches the regular expression ROOMS, to read and send (or only read)."
    )

    def add_arguments(self, parser):
        parser.add_argument("user", help="a username")
        parser.add_argument("rooms", help=r"a regular expression, e.g. private\.team-a")
        parser.add_argument("--read-only", action="store_true", help="read, not send")

    def handle(self, *args, user: str, rooms: str, read_only: bool, **options):
        holder = get_user_model().objects.filter(username=user).first()
        if holder is None:
            raise CommandError(f"no user named {user!r} (manage.py createsuperuser makes one)")
        grant = RoomGrant(user=holder, rooms=rooms, publish=not read_only)
        try:
            grant.full_clean()
        except ValidationError as error:
            raise CommandError("; ".join(error.messages)) from None
        grant.save()
        self.stdout.write(f"granted {grant}")
