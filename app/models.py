"""Who may be issued a token for a private room: ``RoomGrant`` rows (issue 31).

A model, not a Django permission. A permission (``user.has_perm("app.join_private_rooms")``)
is one switch for every private room: Django's ``ModelBackend`` has no per-object checks, so
"may join ``private.team-a`` but not ``private.board``" would need another backend
(django-guardian) or a permission per room, made at run time. A grant row names the rooms (a
regular expression, as ``ROOMS_PRIVATE`` is), the rights (read, or read and publish), and who
holds it: a user, or a group, so that whole teams are granted as Django's permissions are.
An active superuser holds every grant, with publish, as with Django's permissions.

Rows are written with ``manage.py shell`` or any admin the project adds (this one installs no
admin); ``manage.py room-token`` needs none.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q


def validate_pattern(value: str) -> None:
    try:
        re.compile(value)
    except re.error as error:
        raise ValidationError(f"not a regular expression: {error}") from None


class RoomGrantQuerySet(models.QuerySet):
    def held_by(self, user) -> RoomGrantQuerySet:
        """The grants ``user`` holds, its own and its groups'."""
        return self.filter(Q(user=user) | Q(group__in=user.groups.all()))


class RoomGrant(models.Model):
    """``user`` (or every member of ``group``) may be issued tokens for the rooms whose whole
    name ``rooms`` matches, to read and, if ``publish``, to send."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE
    )
    group = models.ForeignKey(Group, null=True, blank=True, on_delete=models.CASCADE)
    rooms = models.CharField(
        max_length=200,
        validators=[validate_pattern],
        help_text=r"A regular expression matched against the whole room name: private\.team-a",
    )
    publish = models.BooleanField(default=True, help_text="Read and publish; off: read only.")

    objects = RoomGrantQuerySet.as_manager()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(user__isnull=False, group__isnull=True)
                | Q(user__isnull=True, group__isnull=False),
                name="room_grant_user_or_group",
                violation_error_message="a grant is held by a user or by a group, not both",
            )
        ]

    def __str__(self) -> str:
        holder = f"user {self.user}" if self.user_id else f"group {self.group}"
        return f"{holder}: {self.rooms} ({'read, publish' if self.publish else 'read'})"

    def matches(self, room: str) -> bool:
        """Whether this grant covers ``room`` (a pattern that does not compile covers none)."""
        try:
            return re.fullmatch(self.rooms, room) is not None
        except re.error:
            return False


def room_rights(user, room: str) -> bool | None:
    """What ``user`` may be issued for ``room``: None (nothing), False (read) or True (read and
    publish). An active superuser: True on every room."""
    if not user.is_active:
        return None
    if user.is_superuser:
        return True
    rights = None
    for grant in RoomGrant.objects.held_by(user):
        if grant.matches(room):
            rights = rights or grant.publish
    return rights
