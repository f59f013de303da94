"""The whole stack in one place: the path of every connection starts here.

HTTP goes to Django. A WebSocket handshake passes the Origin check, gets the session and
user if it traces (``SessionWhenNeeded``: Channels' ``AuthMiddlewareStack`` without its
per-message send wrapper, for the handshakes that read the session; see ``app/middleware.py``),
and is routed by path to a consumer in ``app.routing`` (Channels' ``URLRouter``, holding no
frame per connection).
"""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_asgi_app = get_asgi_application()  # sets Django up before the imports below touch models

from channels.routing import ProtocolTypeRouter  # noqa: E402

from app.handshake import allowed_hosts_origin_validator  # noqa: E402
from app.middleware import SessionWhenNeeded, StaticFiles  # noqa: E402
from app.routing import URLRouter, websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        # The page's CSS and JS are served by the app itself: no separate static server needed
        # (a path out of the static folders is a 404 and one WARNING: app/middleware.py).
        "http": StaticFiles(django_asgi_app),
        "websocket": allowed_hosts_origin_validator(
            SessionWhenNeeded(URLRouter(websocket_urlpatterns))
        ),
    }
)

# Everything loaded so far (Django, the URL conf, every module) lives as long as the process:
# frozen, it is no longer walked by each full collection, which a server of 1,000 connections
# otherwise runs every few hundred messages (a 1,000-member room: +20-30 % deliveries/s,
# docs/performance.md). Under ``--workers`` each process freezes its own on import.
gc.freeze()
