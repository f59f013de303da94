"""Shared test set-up: the skip policy, and a communicator that speaks like a real server."""

from __future__ import annotations

import os

import pytest
from channels.testing import WebsocketCommunicator

from project.asgi import application

#: What uvicorn declares: ASGI WebSocket spec 2.4 and the denial-response extension.
UVICORN_SCOPE = {"spec_version": "2.4"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With REQUIRE_ALL_TESTS=1 (CI), a skipped test is a failed test: nothing is quietly left out."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("REQUIRE_ALL_TESTS") == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, but REQUIRE_ALL_TESTS=1 forbids skips: {reason}"


def make_communicator(
    path: str,
    *,
    subprotocols: list[str] | None = None,
    origin: str | None = "http://127.0.0.1:8000",
    spec_version: str | None = "2.4",
    extensions: dict | None = None,
    app=application,
) -> WebsocketCommunicator:
    """A ``WebsocketCommunicator`` on the whole stack (origin check, auth, router).

    By default it declares ASGI spec 2.4 as uvicorn does; ``spec_version=None`` makes it
    look like daphne, which declares none.
    """
    headers = [(b"origin", origin.encode())] if origin is not None else []
    communicator = WebsocketCommunicator(
        app, path, headers=headers, subprotocols=subprotocols, spec_version=spec_version
    )
    if extensions is not None:
        communicator.scope["extensions"] = extensions
    return communicator


@pytest.fixture
def communicator_factory():
    """Yields ``make_communicator`` and disconnects every communicator it made at the end."""
    made: list[WebsocketCommunicator] = []

    def factory(*args, **kwargs) -> WebsocketCommunicator:
        communicator = make_communicator(*args, **kwargs)
        made.append(communicator)
        return communicator

    yield factory
    for communicator in made:
        if not communicator.future.done():
            communicator.future.cancel()
