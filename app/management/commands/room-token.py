"""``python manage.py room-token ROOM --member NAME [--ttl SECONDS] [--read-only]``: a signed
room token (app/room_access.py) on stdout, for operators and scripts.

The file's name is the command's: Django lists commands with ``pkgutil.iter_modules`` and loads
``app.management.commands.room-token`` with ``importlib.import_module``, which takes a name no
``import`` statement could.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from app import room_access


def positive(value: str) -> int:
    seconds = int(value)
    if seconds <= 0:
        raise ValueError(value)
    return seconds


class Command(BaseCommand):
    help = (
        "Print a token that lets MEMBER into ROOM (that exact name) as ?token=..., to read and "
        "publish, or only read (--read-only), for --ttl seconds (default ROOM_TOKEN_TTL, 3600)."
    )

    def add_arguments(self, parser):
        parser.add_argument("room")
        parser.add_argument("--member", required=True, help="the member's name in the room")
        parser.add_argument("--ttl", type=positive, help="seconds the token is valid")
        parser.add_argument(
            "--read-only", action="store_true", help="the member receives, and may not send"
        )

    def handle(self, *args, room: str, member: str, ttl: int | None, read_only: bool, **options):
        try:
            token = room_access.make_token(room, member, publish=not read_only, ttl=ttl)
        except ValueError as error:  # InvalidRoom too
            raise CommandError(str(error)) from None
        self.stdout.write(token)
