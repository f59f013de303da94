"""``manage.py fuzzingserver``: the Autobahn TestSuite's fuzzing server, for testing WebSocket
clients (the page's "Test this browser", ``make client-conformance``).

A command of its own rather than a second port of ``manage.py serve``: it is a test tool, not
part of the service, so it never starts where the service is deployed unless asked; ``serve``'s
``--workers`` processes would each want the one port; and it runs in a process without Django
(see ``_fuzzingserver``). Binds ``CLIENT_CONFORMANCE_URL``'s host and port when that is set, so one
variable configures the page and the server; 127.0.0.1:9001 (Autobahn's port) otherwise.
"""

from __future__ import annotations

import os
import sys
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from app.management.commands._fuzzingserver import SECTIONS

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class Command(BaseCommand):
    help = "Serve the Autobahn client cases (kosoku) to WebSocket clients under test."

    def add_arguments(self, parser: CommandParser) -> None:
        configured = urlsplit(settings.CLIENT_CONFORMANCE_URL)
        parser.add_argument("--host", default=configured.hostname or "127.0.0.1")
        parser.add_argument("--port", type=int, default=configured.port or 9001)
        parser.add_argument(
            "--cases",
            default=",".join(SECTIONS),
            help="comma-separated case ids or globs (default: sections 1-7, 9, 10, 12, 13)",
        )
        parser.add_argument("--exclude", default="", help="comma-separated case ids or globs")
        parser.add_argument("--record", help="write every agent's verdicts here (JSON)")
        parser.add_argument(
            "--public",
            action="store_true",
            help="allow a --host that is not loopback (the cases let anyone drive load)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["host"] not in LOOPBACK and not options["public"]:
            raise CommandError(f"--host {options['host']} is not loopback: add --public to mean it")
        argv = [sys.executable, "-m", "app.management.commands._fuzzingserver"]
        argv += ["--host", options["host"], "--port", str(options["port"])]
        argv += ["--cases", options["cases"], "--exclude", options["exclude"]]
        if options["record"]:
            argv += ["--record", options["record"]]
        sys.stdout.flush()
        os.execv(sys.executable, argv)  # kosoku must not share a process with daphne's autobahn
