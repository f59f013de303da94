"""A pytest plugin (``-p lean_bases``) that puts the project's base classes and URL router in
Channels' place.

It must run before ``channels.generic.*``, ``channels.routing``'s users or any test module
imports ``AsyncConsumer``, ``SyncConsumer`` or ``URLRouter``; a ``-p`` plugin is imported
before conftest files and test modules. Once the suite's modules are collected it checks that
Channels' generic consumers really stand on the project's classes, and writes where those came
from to ``$LEAN_BASES_RECORD``: with a shared virtual environment the editable install may
point at another checkout than the one under test.
"""

import json
import os

import channels.consumer
import channels.routing

from app.dispatch import LeanAsyncConsumer, LeanSyncConsumer

channels.consumer.AsyncConsumer = LeanAsyncConsumer
channels.consumer.SyncConsumer = LeanSyncConsumer

from app.routing import URLRouter  # noqa: E402  (after: it imports channels.generic.websocket)

channels.routing.URLRouter = URLRouter


def pytest_collection_finish(session) -> None:
    import channels.generic.websocket as generic

    import app.dispatch

    swapped = (
        generic.AsyncWebsocketConsumer.__mro__[1] is LeanAsyncConsumer
        and generic.WebsocketConsumer.__mro__[1] is LeanSyncConsumer
        and channels.routing.URLRouter is URLRouter
    )
    if record := os.environ.get("LEAN_BASES_RECORD"):
        with open(record, "w") as file:
            json.dump({"swapped": swapped, "dispatch": app.dispatch.__file__}, file)
    if not swapped:
        raise RuntimeError("lean_bases: Channels' consumers do not stand on the project's classes")
