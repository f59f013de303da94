"""Real server processes for end-to-end tests, browser tests and benchmarks.

``LiveServer`` starts the project under uvicorn (``manage.py serve``, exactly the run command),
daphne, hypercorn or granian on a free loopback port, waits until the port answers, and on ``stop()`` sends
SIGTERM and keeps the log.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
#: Every maintained ASGI server with WebSockets; each one's behaviour is in ``tests.compat``.
SERVERS = ("uvicorn", "daphne", "hypercorn", "granian")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(
    port: int,
    process: subprocess.Popen,
    name: str,
    *,
    timeout: float,
    details: Callable[[], str] = str,
) -> None:
    """Block until ``port`` on 127.0.0.1 accepts a connection; fail, with ``details()`` (a
    log, say), if ``process`` exits first or the port stays closed for ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{details()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)  # poll interval while the port is not yet open
    raise TimeoutError(f"{name} did not open port {port} in {timeout}s:\n{details()}")


def server_command(
    kind: str, port: int, app: str = "project.asgi:application", extra: tuple[str, ...] = ()
) -> list[str]:
    """The command line for ``kind``; uvicorn goes through ``manage.py serve`` like the run command
    (``extra``: more of its options, ``--workers 2`` say)."""
    if kind == "uvicorn":
        return [
            sys.executable,
            "manage.py",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--app",
            app,
            *extra,
        ]
    if kind == "uvicorn-plain":  # uvicorn as a user types it: every option at its default
        return [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), app]
    if kind == "runserver":  # Django's development server, which is daphne's
        return [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"]
    if kind == "daphne":
        limit = str(settings.SERVER_MAX_MESSAGE_BYTES)
        return [
            sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
            "--websocket-max-message-size", limit, "--websocket-max-frame-size", limit,
            app,
        ]  # fmt: skip
    if kind == "hypercorn":  # its defaults: 16 MiB message limit, above the application's
        return [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", app]
    if kind == "granian":
        # asginl: ASGI without lifespan (Channels' router has no lifespan handler), as uvicorn's
        # lifespan="off"; otherwise its defaults, as a user would type it.
        return [
            sys.executable, "-m", "granian", "--interface", "asginl",
            "--host", "127.0.0.1", "--port", str(port), app,
        ]  # fmt: skip
    raise ValueError(f"unknown server {kind!r}")


class LiveServer:
    """One server process on a free loopback port.

    ``wait_for_log`` searches the log from ``since``: the conftest marks every live server's
    log at the start of each test, so a line an earlier test caused cannot satisfy a later one.
    """

    #: The servers not yet stopped, for the conftest's per-test mark.
    live: ClassVar[weakref.WeakSet[LiveServer]] = weakref.WeakSet()

    def __init__(
        self,
        kind: str,
        *,
        env: dict[str, str] | None = None,
        app: str = "project.asgi:application",
        cwd: Path = ROOT,
        extra: tuple[str, ...] = (),
    ):
        self.kind = kind
        self.port = free_port()
        self.log_file = tempfile.NamedTemporaryFile(prefix=f"{kind}-", suffix=".log", delete=False)  # noqa: SIM115
        full_env = {**os.environ, "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process = subprocess.Popen(
            server_command(kind, self.port, app, extra),
            cwd=cwd,
            env=full_env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.returncode: int | None = None
        self.since = 0  # where wait_for_log starts reading the log
        LiveServer.live.add(self)

    def mark(self) -> None:
        """From now on, ``wait_for_log`` matches only lines written after this point."""
        self.since = len(self.log())

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> LiveServer:
        """Block until the port accepts a connection; fail with the log if the process dies first."""
        wait_for_port(self.port, self.process, self.kind, timeout=timeout, details=self.log)
        return self

    def log(self) -> str:
        return Path(self.log_file.name).read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 5.0) -> re.Match[str]:
        """Wait until a log line written since ``mark()`` matches ``pattern`` (a regex) and
        return the match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log()[self.since :])
            if match:
                return match
            if time.monotonic() > deadline:
                raise TimeoutError(f"no log line matching {pattern!r} in {timeout}s:\n{self.log()}")
            time.sleep(0.05)  # poll interval of the log file

    def terminate(self) -> None:
        """Send SIGTERM, as a process manager does."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        self.terminate()
        try:
            self.returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.returncode = self.process.wait()
        self.log_file.close()
        LiveServer.live.discard(self)
        return self.returncode

    def __enter__(self) -> LiveServer:
        return self.wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()
