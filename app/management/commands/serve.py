"""``python manage.py serve``: the project under uvicorn, with its settings checked first."""

from __future__ import annotations

import uvicorn
from django.core.management.base import BaseCommand, CommandError

from app.metrics import multiprocess_dir_for_serving
from app.server import connection_cap, raise_fd_limit, uvicorn_config
from app.startup import StartupError, check_startup


class Command(BaseCommand):
    help = "Serve HTTP and WebSocket with uvicorn (autoreload with --reload, processes with --workers)."
    requires_system_checks = []  # check_startup runs them, with a one-line error instead of a report

    def add_arguments(self, parser):
        parser.add_argument(
            "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)"
        )
        parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
        parser.add_argument(
            "--reload", action="store_true", help="restart when Python code changes"
        )
        parser.add_argument(
            "--workers", type=int, default=None, help="server processes (needs REDIS_URL)"
        )
        parser.add_argument(
            "--app",
            default="project.asgi:application",
            help="ASGI application to serve with the same settings (the benchmark serves its own)",
        )

    def handle(
        self, *args, host: str, port: int, reload: bool, workers: int | None, app: str, **options
    ):
        try:
            check_startup(host=host, port=port, workers=workers)
        except StartupError as error:
            raise CommandError(str(error)) from None
        # Raised here, so that --workers' processes inherit it; each says nothing more.
        self.stdout.write(
            f"open-file limit {raise_fd_limit()}: at most {connection_cap()} WebSockets per process"
        )
        # One set of metrics for all processes (app/metrics.py); each worker is a new process
        # and reads this before it imports prometheus_client.
        with multiprocess_dir_for_serving():
            uvicorn.run(
                **{
                    **uvicorn_config(host=host, port=port, reload=reload, workers=workers),
                    "app": app,
                }
            )
