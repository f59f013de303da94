"""Consumers that test the base classes' contract, and an application serving them.

``application`` is the project's whole stack with ``/ws/probe/...`` routes added in front, so a
real server process can be started on it (``LiveServer(kind, app="tests.probe_app:application")``)
and the in-process tests use the same classes:

- ``/ws/probe/raise/{sync,async}/``: echo, except that ``boom`` makes the handler raise;
- ``/ws/probe/context/{sync,async}/``: each message reports what the handler sees of a
  ``ContextVar`` and of Django's active time zone (an asgiref ``Local``, as the active
  language is), then sets both from the message's text.
"""

from __future__ import annotations

import contextvars
import os
import threading

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

from channels.exceptions import StopConsumer
from channels.routing import URLRouter
from django.urls import path
from django.utils import timezone

from app.dispatch import LeanAsyncConsumer, LeanSyncConsumer
from app.protocol import Message, Receive, Scope, Send
from project.asgi import application as project_application

#: Set by ``RequestIdMiddleware`` before the consumer runs, as a user's ASGI middleware would.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")
#: Set and read by the handlers.
handler_value: contextvars.ContextVar[str] = contextvars.ContextVar("handler_value", default="")


class RaisingSync(LeanSyncConsumer):
    channel_layer_alias = None

    def websocket_connect(self, event: Message) -> None:
        self.send({"type": "websocket.accept"})

    def websocket_receive(self, event: Message) -> None:
        if event.get("text") == "boom":
            raise RuntimeError("the handler failed")
        self.send({"type": "websocket.send", "text": event["text"]})

    def websocket_disconnect(self, event: Message) -> None:
        raise StopConsumer()


class RaisingAsync(LeanAsyncConsumer):
    channel_layer_alias = None
    uses_database = False

    async def websocket_connect(self, event: Message) -> None:
        await self.send({"type": "websocket.accept"})

    async def websocket_receive(self, event: Message) -> None:
        if event.get("text") == "boom":
            raise RuntimeError("the handler failed")
        await self.send({"type": "websocket.send", "text": event["text"]})

    async def websocket_disconnect(self, event: Message) -> None:
        raise StopConsumer()


def seen_then_set(text: str) -> str:
    """What this handler sees (request id, handler value, time zone, thread), then set both."""
    seen = (
        f"{request_id.get()}|{handler_value.get()}|{timezone.get_current_timezone_name()}|"
        f"{threading.get_ident()}"
    )
    handler_value.set(text)
    timezone.activate(text.split("-", 2)[2])
    return seen


class ContextSync(LeanSyncConsumer):
    channel_layer_alias = None

    def websocket_connect(self, event: Message) -> None:
        self.send({"type": "websocket.accept"})

    def websocket_receive(self, event: Message) -> None:
        self.send({"type": "websocket.send", "text": seen_then_set(event["text"])})

    def websocket_disconnect(self, event: Message) -> None:
        raise StopConsumer()


class ContextAsync(LeanAsyncConsumer):
    channel_layer_alias = None
    uses_database = False

    async def websocket_connect(self, event: Message) -> None:
        await self.send({"type": "websocket.accept"})

    async def websocket_receive(self, event: Message) -> None:
        await self.send({"type": "websocket.send", "text": seen_then_set(event["text"])})

    async def websocket_disconnect(self, event: Message) -> None:
        raise StopConsumer()


class RequestIdMiddleware:
    """Sets ``request_id`` from the query string, the way tracing or request-id middleware does."""

    def __init__(self, inner) -> None:
        self.inner = inner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id.set(scope.get("query_string", b"").decode() or "none")
        await self.inner(scope, receive, send)


probe_routes = URLRouter(
    [
        path("ws/probe/raise/sync/", RaisingSync.as_asgi()),
        path("ws/probe/raise/async/", RaisingAsync.as_asgi()),
        path("ws/probe/context/sync/", RequestIdMiddleware(ContextSync.as_asgi())),
        path("ws/probe/context/async/", RequestIdMiddleware(ContextAsync.as_asgi())),
    ]
)


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    """``/ws/probe/...`` to the probes, everything else to the project as it is served."""
    if scope["type"] == "websocket" and scope["path"].startswith("/ws/probe/"):
        return await probe_routes(scope, receive, send)
    return await project_application(scope, receive, send)
