"""HTTP views: the demo page, and a clear answer to plain HTTP on WebSocket paths."""

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe


@require_safe
def index(request: HttpRequest) -> HttpResponse:
    """The browser test client for the echo consumers."""
    return render(
        request,
        "index.html",
        {
            "max_message_bytes": settings.ECHO_MAX_MESSAGE_BYTES,
            "subprotocols": settings.ECHO_SUBPROTOCOLS,
        },
    )


def websocket_only(request: HttpRequest) -> HttpResponse:
    """``/ws/...`` over plain HTTP: 426 Upgrade Required, instead of a 404 page or a 500."""
    response = HttpResponse(
        "This path speaks WebSocket only: connect with a WebSocket client.\n",
        status=426,
        content_type="text/plain; charset=utf-8",
    )
    response["Upgrade"] = "websocket"
    return response
