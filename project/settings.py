"""Settings. Everything a deployment changes comes from the environment; README lists each.

The defaults run out of the box for development. ``DJANGO_ENV=production`` switches to
production rules (issue: hardening) where the development defaults are refused.
"""

import os
import re
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={value!r}: expected 1/0, true/false, yes/no or on/off")


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_addresses(name: str) -> list[tuple[str, int]]:
    """``host:port[,host:port...]`` as (host, port) pairs."""
    pairs = []
    for item in env_list(name, ""):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ImproperlyConfigured(f"{name}: {item!r} is not host:port")
        pairs.append((host.strip("[]"), int(port)))
    return pairs


def env_int(name: str, default: int) -> int:
    return int(env_number(name, default, int, "a whole number"))


def env_float(name: str, default: float) -> float:
    return env_number(name, default, float, "a number")


def env_number(name: str, default: float, parse: type[float], expected: str) -> float:
    """``name`` from the environment parsed by ``parse``; ``default`` when unset or blank."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return parse(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r}: expected {expected}") from None


# DJANGO_ENV=production turns the development defaults into errors and the security settings on.
DJANGO_ENV = os.environ.get("DJANGO_ENV", "development").strip().lower()
if DJANGO_ENV not in {"development", "production"}:
    raise ImproperlyConfigured(f"DJANGO_ENV={DJANGO_ENV!r}: expected development or production")
PRODUCTION = DJANGO_ENV == "production"


def required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ImproperlyConfigured(f"{name} must be set when DJANGO_ENV=production")
    return value


if PRODUCTION:
    SECRET_KEY = required("DJANGO_SECRET_KEY")
    DEBUG = False
    if env_bool("DJANGO_DEBUG", False):
        raise ImproperlyConfigured("DJANGO_DEBUG must be off when DJANGO_ENV=production")
    ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", required("DJANGO_ALLOWED_HOSTS"))
else:
    SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-insecure-key-set-DJANGO_SECRET_KEY")
    DEBUG = env_bool("DJANGO_DEBUG", True)
    ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")

#: Origins besides the site's own that may POST (Django's CSRF check) and open WebSockets
#: (app/handshake.py ``OriginPolicy``): ``https://echo.example.com:8443``, ``https://*.example.com``.
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "daphne",  # first, so that `manage.py runserver` serves ASGI through daphne
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "app",
]

MIDDLEWARE = [
    "app.middleware.LocalProbesMiddleware",  # first: before anything reads the Host
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "app.middleware.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB_PATH", str(BASE_DIR / "db.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"

# Channel layer: in memory for one process; channels-redis when REDIS_URL is set.
# REDIS_CHANNEL_LAYER picks channels-redis' layer: "core" (RedisChannelLayer, the default; see
# docs/channel-layers.md for the measurement behind the choice) or "pubsub".
# CHANNEL_CAPACITY: messages a channel holds for a slow reader before the layer drops (and we
# log) the next. With "core", all consumers of one process share one Redis key, so this is
# per process, not per connection. channels' default of 100 drops under a busy room's burst.
# CHANNEL_EXPIRY: seconds an undelivered message waits before it is discarded.
# REDIS_URL may name several Redis servers, comma-separated: channels-redis then shards
# channels and groups across them by consistent hashing (each process's channels on one,
# each group on one), so rooms scale past one Redis (tests/test_shards.py).
REDIS_URL = os.environ.get("REDIS_URL", "")
REDIS_URLS = [url.strip() for url in REDIS_URL.split(",") if url.strip()]
REDIS_CHANNEL_LAYER = os.environ.get("REDIS_CHANNEL_LAYER", "core")
CHANNEL_CAPACITY = env_int("CHANNEL_CAPACITY", 10_000)
CHANNEL_EXPIRY = env_int("CHANNEL_EXPIRY", 60)
# CHANNEL_CAPACITY_BYTES: bytes a channel holds, in memory, before the layer drops the next
# message (channels-redis counts messages only; its queues live in Redis).
CHANNEL_CAPACITY_BYTES = env_int("CHANNEL_CAPACITY_BYTES", 16 * 1024 * 1024)
# redis-py 8 reads with a 5 s socket_timeout by default, the same 5 s that channels-redis blocks
# in BZPOPMIN, so every idle receive fails with TimeoutError (channels_redis#422): read longer.
# REDIS_MAX_CONNECTIONS: Redis connections one process's channel layer may open. redis-py 8
# defaults to 100 and then fails at once ("Too many connections"): a burst of 1,000 members
# joining a room got 503s (bench/fanout.py found it).
REDIS_MAX_CONNECTIONS = env_int("REDIS_MAX_CONNECTIONS", 1000)
REDIS_TIMEOUTS = {
    "socket_timeout": 15,
    "socket_connect_timeout": 5,
    "max_connections": REDIS_MAX_CONNECTIONS,
}
# Redis behind Sentinel: REDIS_SENTINELS=host:port[,host:port...] (instead of REDIS_URL) and
# REDIS_SENTINEL_MASTER; channels-redis asks the sentinels for the master on every new connection.
REDIS_SENTINELS = env_addresses("REDIS_SENTINELS")
REDIS_SENTINEL_MASTER = os.environ.get("REDIS_SENTINEL_MASTER", "mymaster")
if REDIS_SENTINELS:
    REDIS_HOST = {
        "sentinels": REDIS_SENTINELS,
        "master_name": REDIS_SENTINEL_MASTER,
        # Asking a sentinel must fail fast: a dead one is skipped for the next.
        "sentinel_kwargs": {"socket_timeout": 2, "socket_connect_timeout": 2},
        **REDIS_TIMEOUTS,
    }
    REDIS_HOSTS = [REDIS_HOST]
else:
    REDIS_HOSTS = [{"address": url, **REDIS_TIMEOUTS} for url in REDIS_URLS]
#: Whether rooms go through Redis (REDIS_URL or REDIS_SENTINELS), so across processes.
REDIS_ENABLED = bool(REDIS_URL or REDIS_SENTINELS)
if not REDIS_ENABLED:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "app.layers.BoundedInMemoryChannelLayer",
            "CONFIG": {
                "capacity": CHANNEL_CAPACITY,
                "capacity_bytes": CHANNEL_CAPACITY_BYTES,
                "expiry": CHANNEL_EXPIRY,
            },
        }
    }
elif REDIS_CHANNEL_LAYER == "core":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": REDIS_HOSTS,
                "capacity": CHANNEL_CAPACITY,
                "expiry": CHANNEL_EXPIRY,
            },
        }
    }
elif REDIS_CHANNEL_LAYER == "pubsub":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": REDIS_HOSTS},
        }
    }
else:
    raise ImproperlyConfigured(
        f"REDIS_CHANNEL_LAYER={REDIS_CHANNEL_LAYER!r}: expected core or pubsub"
    )

# Rooms (docs/rooms.md): their own channel layer alias, "rooms", whose engine orders each
# room's messages (offsets under an epoch) and keeps its history for members that resume.
# ROOM_ENGINE: "memory" (one process) or "redis" (the default when Redis is configured: one Lua
# script and one PUBLISH per room message, whatever the room's size).
ROOM_ENGINE = os.environ.get("ROOM_ENGINE", "redis" if REDIS_ENABLED else "memory")
if ROOM_ENGINE not in ("memory", "redis"):
    raise ImproperlyConfigured(f"ROOM_ENGINE={ROOM_ENGINE!r}: expected memory or redis")
if ROOM_ENGINE == "redis" and not REDIS_ENABLED:
    raise ImproperlyConfigured("ROOM_ENGINE=redis needs REDIS_URL or REDIS_SENTINELS")
#: A room's history: at most this many messages, this many seconds old, this many bytes.
#: The defaults hold a 2 s reconnect in a room of 1,000 messages a second. 0 on any: off.
ROOM_HISTORY_SIZE = env_int("ROOM_HISTORY_SIZE", 2000)
ROOM_HISTORY_TTL = env_int("ROOM_HISTORY_TTL", 300)
ROOM_HISTORY_BYTES = env_int("ROOM_HISTORY_BYTES", 4 * 1024 * 1024)
#: What one process keeps of every room's history together (the memory engine's history, the
#: Redis engine's recent part of it); past it, the least recently written rooms' go first.
ROOM_HISTORY_TOTAL_BYTES = env_int("ROOM_HISTORY_TOTAL_BYTES", 256 * 1024 * 1024)
#: Access (docs/rooms.md): rooms whose whole name matches ROOMS_PRIVATE need a signed room token
#: (?token=, from manage.py room-token or POST /rooms/<room>/token); every other room is open.
ROOMS_PRIVATE = os.environ.get("ROOMS_PRIVATE", r"private\..+")
try:
    re.compile(ROOMS_PRIVATE)
except re.error as error:
    raise ImproperlyConfigured(f"ROOMS_PRIVATE={ROOMS_PRIVATE!r}: {error}") from None
LOGIN_REDIRECT_URL = "/"  # accounts/login/ (a signed-in user is issued room tokens)
#: Seconds a room token lives unless its issuer says otherwise.
ROOM_TOKEN_TTL = env_int("ROOM_TOKEN_TTL", 3600)
#: Presence: the members a welcome lists (its count is always the whole room); join and leave
#: frames go out while a room has at most ROOM_PRESENCE_EVENTS_MAX members; a process that
#: died without a word has its members leave within ROOM_PRESENCE_TIMEOUT seconds (Redis).
ROOM_PRESENCE_LIST = env_int("ROOM_PRESENCE_LIST", 100)
ROOM_PRESENCE_EVENTS_MAX = env_int("ROOM_PRESENCE_EVENTS_MAX", 1000)
ROOM_PRESENCE_TIMEOUT = env_int("ROOM_PRESENCE_TIMEOUT", 10)
#: Seconds the Redis engine waits to connect, for a command, or for a subscription.
ROOM_REDIS_TIMEOUT = env_float("ROOM_REDIS_TIMEOUT", 5.0)
CHANNEL_LAYERS["rooms"] = {
    "BACKEND": "app.room_redis.RedisRooms"
    if ROOM_ENGINE == "redis"
    else "app.room_engine.MemoryRooms",
    "CONFIG": {
        "capacity": CHANNEL_CAPACITY,
        "capacity_bytes": CHANNEL_CAPACITY_BYTES,
        "expiry": CHANNEL_EXPIRY,
    },
}

# The echo service.
ECHO_SUBPROTOCOLS = env_list("ECHO_SUBPROTOCOLS", "echo.v1")
ECHO_MAX_MESSAGE_BYTES = env_int("ECHO_MAX_MESSAGE_BYTES", 256 * 1024)
WEBSOCKET_ALLOW_MISSING_ORIGIN = env_bool("WEBSOCKET_ALLOW_MISSING_ORIGIN", True)
#: Per-connection rate limit (token bucket): messages a second, and the burst allowed above it.
#: Over it, the connection closes with 1008 "rate limit". 0 turns it off. The default stays far
#: above one connection's ping-pong echo rate (at most ~16,000/s in docs/benchmarks.md).
WEBSOCKET_RATE_LIMIT = env_int("WEBSOCKET_RATE_LIMIT", 25_000)
WEBSOCKET_RATE_BURST = env_int("WEBSOCKET_RATE_BURST", 5_000)
#: Seconds a trace token (the page's ASGI-event inspector) stays valid after it is issued.
TRACE_TOKEN_TTL = env_int("TRACE_TOKEN_TTL", 600)
#: Live trace tokens one session keeps; issuing another drops the oldest.
TRACE_TOKENS_PER_SESSION = env_int("TRACE_TOKENS_PER_SESSION", 8)
#: Trace sockets (/ws/trace/<token>/) one token may have open in one process: a page and its
#: reconnect. Each traced event is sent to every one of them; the rest are refused with 429.
TRACE_LISTENERS_PER_TOKEN = env_int("TRACE_LISTENERS_PER_TOKEN", 2)
#: Sessions live in a signed cookie, not in the database: a client that asks for trace tokens
#: without end (each anonymous request would make a new session) costs no storage. They hold
#: only trace tokens; the secret key signs them, and no user logs in.
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
#: Threads (lanes) that run SyncConsumer handlers; a connection keeps its lane while it lives.
SYNC_CONSUMER_THREADS = env_int("SYNC_CONSUMER_THREADS", 8)
#: While every lane is running a handler, a new connection opens a new lane, up to this many.
SYNC_CONSUMER_MAX_THREADS = env_int("SYNC_CONSUMER_MAX_THREADS", 256)
#: /ws/test/ (behaviours on demand): bytes a second that the pushes of one client address's
#: connections may send together, per process; a push past it is refused with 429 (400 when it
#: alone asks for more). 8 MiB/s (64 Mbit/s) carries the fastest push of small messages
#: (10,000 a second, up to 838 bytes each) or a 1 MiB push 8 times a second, and keeps one
#: address to a small share of a server's uplink: not an amplifier for anyone with a socket.
TEST_PUSH_BYTES_PER_CLIENT = env_int("TEST_PUSH_BYTES_PER_CLIENT", 8 * 1024 * 1024)
#: /ws/test/?delay=: bytes of echoes one connection holds while they wait; past it, the
#: consumer takes no more messages until the oldest has gone (and the server stops reading).
#: 1 MiB: what a client that does not read can already make a connection hold (4 x
#: WEBSOCKET_WRITE_BUFFER_BYTES), and four echoes at ECHO_MAX_MESSAGE_BYTES.
TEST_DELAY_BACKLOG_BYTES = env_int("TEST_DELAY_BACKLOG_BYTES", 1024 * 1024)

#: /healthz and /handshake-check ask Redis at most once per this many seconds per process
#: (one PING at a time, on one kept connection, within HEALTH_CHECK_TIMEOUT seconds); the
#: answer in between is the last one (app/layers.py ``RedisHealth``).
HEALTH_CHECK_INTERVAL = env_float("HEALTH_CHECK_INTERVAL", 1.0)
HEALTH_CHECK_TIMEOUT = env_float("HEALTH_CHECK_TIMEOUT", 1.0)

#: Who may read /metrics: "loopback" (clients on this host; behind a proxy, the forwarded
#: address counts), "token" (an ``Authorization: Bearer $METRICS_TOKEN`` header) or "off" (404).
METRICS_ACCESS = os.environ.get("METRICS_ACCESS", "loopback").strip().lower()
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
if METRICS_ACCESS not in {"loopback", "token", "off"}:
    raise ImproperlyConfigured(
        f"METRICS_ACCESS={METRICS_ACCESS!r}: expected loopback, token or off"
    )
if METRICS_ACCESS == "token" and len(METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("METRICS_ACCESS=token needs METRICS_TOKEN of at least 16 characters")

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # Escapes control characters in messages: client text cannot forge a line (app/logs.py).
    "formatters": {
        "plain": {
            "()": "app.logs.EscapingFormatter",
            # The process id tells apart the workers of `serve --workers N`.
            "fmt": "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s",
        }
    },
    "filters": {"client_fault": {"()": "app.logs.ClientFault"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "app": {"level": LOG_LEVEL},
        # channels-redis reports channels over capacity (dropped messages) at INFO.
        "channels_redis": {"level": "INFO"},
        "django": {"level": "INFO"},
        # A Host header outside ALLOWED_HOSTS: the client's doing, not an ERROR (app/logs.py).
        "django.security.DisallowedHost": {"filters": ["client_fault"]},
        # hypercorn prints its log lines with a handler of its own: not a second time through ours.
        "hypercorn": {"propagate": False},
    },
}

# The server (python manage.py serve).
# BEHIND_PROXY=1: a reverse proxy terminates TLS and sets X-Forwarded-Proto (see README).
#: uvicorn's own frame limit: above ECHO_MAX_MESSAGE_BYTES, so the application refuses first.
SERVER_MAX_MESSAGE_BYTES = env_int("SERVER_MAX_MESSAGE_BYTES", 4 * ECHO_MAX_MESSAGE_BYTES)
#: Trust X-Forwarded-For/-Proto from FORWARDED_ALLOW_IPS (set when a reverse proxy is in front).
BEHIND_PROXY = env_bool("BEHIND_PROXY", False)
FORWARDED_ALLOW_IPS = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")

# Bounds on what one client can make the server hold (app/server/ has the table; each one is
# attacked by tests/test_limits.py). None throttles an honest client: see docs/hardening.md.
#: Request line and headers of one request, in bytes: past it, 431 and the socket closed.
HTTP_MAX_HEADER_BYTES = env_int("HTTP_MAX_HEADER_BYTES", 16 * 1024)
#: Header lines of one request: past it, 431.
HTTP_MAX_HEADERS = env_int("HTTP_MAX_HEADERS", 100)
#: Seconds a client has to send a whole request head once connected (slowloris): then 408.
HTTP_HEADER_TIMEOUT = env_int("HTTP_HEADER_TIMEOUT", 10)
#: Open WebSockets in one process: past it, 503. 0: the open-file limit less 1,000.
WEBSOCKET_MAX_CONNECTIONS = env_int("WEBSOCKET_MAX_CONNECTIONS", 0)
#: Open WebSockets from one client address: past it, 503. 0 turns it off. Behind a proxy
#: (BEHIND_PROXY=1) every client has the proxy's address here, so this one is off and the proxy
#: must limit connections per client (nginx: limit_conn).
WEBSOCKET_MAX_CONNECTIONS_PER_CLIENT = (
    0 if BEHIND_PROXY else env_int("WEBSOCKET_MAX_CONNECTIONS_PER_CLIENT", 2_000)
)
#: Frames a second from one connection, pings and continuation frames included, and the burst
#: above it: past it, close 1008. Far above WEBSOCKET_RATE_LIMIT, which counts messages.
WEBSOCKET_FRAME_RATE = env_int("WEBSOCKET_FRAME_RATE", 50_000)
#: The burst holds a message at the server's limit sent in 64-byte fragments (16,384 at 1 MiB;
#: Autobahn 9.3.1 sends 4 MiB in 65,536 of them), and never less than 10,000.
WEBSOCKET_FRAME_BURST = env_int(
    "WEBSOCKET_FRAME_BURST", max(10_000, SERVER_MAX_MESSAGE_BYTES // 64)
)
# permessage-deflate (app/server/deflate.py): offered to every client that asks. By default
# without context takeover either way, so an idle connection holds no zlib stream, and messages
# under MIN_BYTES are sent as they are. WINDOW_BITS caps the server's window (9-15); LEVEL and
# MEM_LEVEL are zlib's.
WEBSOCKET_DEFLATE = env_bool("WEBSOCKET_DEFLATE", True)
WEBSOCKET_DEFLATE_CONTEXT_TAKEOVER = env_bool("WEBSOCKET_DEFLATE_CONTEXT_TAKEOVER", False)
WEBSOCKET_DEFLATE_MIN_BYTES = env_int("WEBSOCKET_DEFLATE_MIN_BYTES", 256)
WEBSOCKET_DEFLATE_WINDOW_BITS = env_int("WEBSOCKET_DEFLATE_WINDOW_BITS", 12)
WEBSOCKET_DEFLATE_LEVEL = env_int("WEBSOCKET_DEFLATE_LEVEL", 1)
WEBSOCKET_DEFLATE_MEM_LEVEL = env_int("WEBSOCKET_DEFLATE_MEM_LEVEL", 5)
#: Bytes a second one connection may have inflated (compressed messages, after inflating), and
#: the burst above it: past it, close 1008 "compression rate limit"; 0 turns it off. A message
#: of 271 bytes inflates to 256 KiB (deflate's ratio reaches 1,032:1), and inflating is the
#: cost: 0.8 ms for 256 KiB at deflate's densest (docs/deflate.md). The rate is above what the
#: project's fastest compressed echo takes in (4 KiB JSON, 30,317 msg/s: 118 MiB/s); the burst
#: holds 16 messages at the server's limit.
WEBSOCKET_INFLATE_RATE = env_int("WEBSOCKET_INFLATE_RATE", 128 * 1024 * 1024)
WEBSOCKET_INFLATE_BURST = env_int("WEBSOCKET_INFLATE_BURST", 16 * SERVER_MAX_MESSAGE_BYTES)
#: Bytes waiting to be written to one client before reading from it pauses.
WEBSOCKET_WRITE_BUFFER_BYTES = env_int("WEBSOCKET_WRITE_BUFFER_BYTES", 256 * 1024)
#: Seconds between the server's pings on an idle WebSocket (uvicorn's default): below a proxy's
#: read timeout (deploy/nginx.conf: 60 s), so idle sockets stay open through it.
WEBSOCKET_PING_INTERVAL = env_int("WEBSOCKET_PING_INTERVAL", 20)
#: Seconds the write buffer may stay over that mark before the client is dropped (1008).
WEBSOCKET_SEND_TIMEOUT = env_int("WEBSOCKET_SEND_TIMEOUT", 10)

# Production security. HTTPS is assumed: either a TLS-terminating proxy (BEHIND_PROXY=1, which
# also makes Django trust its X-Forwarded-Proto) or TLS in front some other way.
if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    # Load balancers probe, and Prometheus scrapes each host's upstream port, over plain HTTP:
    # redirected to https on a port that speaks HTTP, /metrics could not be scraped at all.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
    if not SECURE_HSTS_PRELOAD:
        # Preload lists are a separate, hard-to-undo commitment of the domain's owner.
        SILENCED_SYSTEM_CHECKS = ["security.W021"]
    if BEHIND_PROXY:
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")


def websocket_origin(name: str) -> str:
    """``ws[s]://host[:port]`` from the environment, or ""; a path, query or other scheme is
    refused, so the origin the page's CSP allows is exactly the one the page connects to."""
    from urllib.parse import urlsplit

    value = os.environ.get(name, "").strip()
    if not value:
        return ""
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in {"ws", "wss"} or not parts.hostname or port == -1:
        raise ImproperlyConfigured(f"{name}={value!r}: expected ws://host:port or wss://host:port")
    if parts.path not in {"", "/"} or parts.query or parts.fragment or parts.username:
        raise ImproperlyConfigured(f"{name}={value!r}: an origin only, no path or query")
    return f"{parts.scheme}://{parts.netloc}"


#: Where the Autobahn fuzzing server for clients (``manage.py fuzzingserver``) listens, as the
#: page's browser reaches it: ``ws://127.0.0.1:9001``. Unset: the page's "Test this browser"
#: control says how to start one, and the page may connect to its own origin only.
CLIENT_CONFORMANCE_URL = websocket_origin("CLIENT_CONFORMANCE_URL")
_CONNECT_SRC = " ".join(filter(None, ["'self'", CLIENT_CONFORMANCE_URL]))

#: The page's Content-Security-Policy: no inline script, nothing from elsewhere but the fuzzing
#: server's one origin when ``CLIENT_CONFORMANCE_URL`` is set.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    f"connect-src {_CONNECT_SRC}; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
