"""Checks before the server starts, each failing with one line that names the cause."""

from __future__ import annotations

import errno
import socket
from urllib.parse import urlparse

from django.conf import settings
from django.core import checks
from redis.exceptions import RedisError

from app.layers import ping_redis


class StartupError(Exception):
    """The server cannot start; the message is the whole explanation."""


def check_startup(*, host: str, port: int, workers: int | None = None) -> None:
    """Raise ``StartupError`` for a busy port, a failing system check or an unusable Redis."""
    _check_port(host, port)
    errors = [m for m in checks.run_checks() if m.level >= checks.ERROR]
    if errors:
        raise StartupError("; ".join(f"{m.id}: {m.msg}" for m in errors))
    if settings.REDIS_URL:
        for url in settings.REDIS_URLS:  # every shard
            _check_redis(url)
    elif settings.REDIS_SENTINELS:
        _check_sentinels()
    elif workers and workers > 1:
        raise StartupError(
            f"--workers {workers} needs REDIS_URL or REDIS_SENTINELS: the in-memory channel layer"
            " cannot reach across processes"
        )


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"port {port} on {host} is already in use: stop the other server or pass --port"
                ) from None
            raise StartupError(f"cannot bind {host}:{port}: {error.strerror}") from None


def _check_redis(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in {"redis", "rediss", "unix"}:
        raise StartupError(f"REDIS_URL {url!r} is not a redis://, rediss:// or unix:// URL")
    try:
        ping_redis(timeout=2, url=url)
    except (RedisError, ValueError, OSError) as error:
        raise StartupError(f"REDIS_URL {url!r} is unreachable: {error}") from None


def _check_sentinels() -> None:
    try:
        ping_redis(timeout=2)
    except (RedisError, ValueError, OSError) as error:
        sentinels = ",".join(f"{host}:{port}" for host, port in settings.REDIS_SENTINELS)
        raise StartupError(
            f"REDIS_SENTINELS {sentinels} give no reachable master"
            f" {settings.REDIS_SENTINEL_MASTER!r}: {error}"
        ) from None
