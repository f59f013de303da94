"""Django settings for the stock Channels peer of the room benchmark (bench/peers.py,
``channels_chat``): what the Channels tutorial's project needs for its chat consumer, and no
more. The channel layer is channels-redis' ``RedisChannelLayer`` on ``REDIS_URL`` as the
tutorial sets it up (in memory when ``REDIS_URL`` is empty), its config at channels-redis'
defaults but for two connection options without which it does not run on redis-py 8, given as
the project gives them (project/settings.py):

- ``socket_timeout``: redis-py 8 reads with a 5 s timeout, the 5 s channels-redis blocks in
  ``BZPOPMIN``: after 5 s without a message, the process's receive fails with ``TimeoutError``
  and every consumer of the process is dropped (channels_redis#422);
- ``max_connections``: redis-py 8's pool refuses the 101st connection at once
  (``MaxConnectionsError``): 1,000 members joining at once get HTTP 500 from ``group_add``.
"""

import os

SECRET_KEY = "bench-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["channels"]
USE_TZ = True
ASGI_APPLICATION = "bench.peers.channels_chat"

_REDIS_URL = os.environ.get("REDIS_URL", "").strip()
_HOST = {"address": _REDIS_URL, "socket_timeout": 15, "max_connections": 1000}
CHANNEL_LAYERS = {
    "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [_HOST]}}
    if _REDIS_URL
    else {"BACKEND": "channels.layers.InMemoryChannelLayer"}
}
