"""A pytest plugin (``-p lean_bases``) that puts the project's base classes and URL router in
Channels' place.

It must run before ``channels.generic.*``, ``channels.routing``'s users or any test module
imports ``AsyncConsumer``, ``SyncConsumer`` or ``URLRouter``; a ``-p`` plugin is imported
before conftest files and test modules.
"""

import channels.consumer
import channels.routing

from app.dispatch import LeanAsyncConsumer, LeanSyncConsumer

channels.consumer.AsyncConsumer = LeanAsyncConsumer
channels.consumer.SyncConsumer = LeanSyncConsumer

from app.routing import URLRouter  # noqa: E402  (after: it imports channels.generic.websocket)

channels.routing.URLRouter = URLRouter
