"""A pytest plugin (``-p lean_bases``) that puts the project's base classes in Channels' place.

It must run before ``channels.generic.*`` or any test module imports ``AsyncConsumer`` or
``SyncConsumer``; a ``-p`` plugin is imported before conftest files and test modules.
"""

import channels.consumer

from app.dispatch import LeanAsyncConsumer, LeanSyncConsumer

channels.consumer.AsyncConsumer = LeanAsyncConsumer
channels.consumer.SyncConsumer = LeanSyncConsumer
