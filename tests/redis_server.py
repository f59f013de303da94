"""A private redis-server on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.servers import free_port

REDIS_SERVER = shutil.which("redis-server")


def redis_missing() -> str | None:
    """Why the Redis tests cannot run here, or None when they can."""
    if REDIS_SERVER is None:
        return "no redis-server on PATH (apt-get install redis-server)"
    return None


class RedisServer:
    """``redis-server`` with no persistence, bound to 127.0.0.1 only (``extra``: more options,
    ``("--replicaof", "127.0.0.1", "6379")`` say)."""

    def __init__(self, *, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="redis-")
        self.extra = extra
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--protected-mode", "yes",
                *self.extra]  # fmt: skip

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)  # poll interval while redis starts
        raise TimeoutError(f"redis-server did not answer on port {self.port} in {timeout}s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: the process dies without a word, as a crashed host would."""
        if self.process:
            self.process.kill()
            self.process.wait(10)


class SentinelServer(RedisServer):
    """``redis-server --sentinel`` watching ``master`` as ``name``, quorum 1, declaring it down
    after ``down_after_ms`` (Sentinel needs a config file it can rewrite)."""

    def __init__(self, master: RedisServer, *, name: str = "mymaster", down_after_ms: int = 1000):
        super().__init__()
        self.config = Path(self.dir) / "sentinel.conf"
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {name} 127.0.0.1 {master.port} 1\n"
            f"sentinel down-after-milliseconds {name} {down_after_ms}\n"
            f"sentinel failover-timeout {name} 10000\n"
        )

    def command(self) -> list[str]:
        return [REDIS_SERVER, str(self.config), "--sentinel"]
