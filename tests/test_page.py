"""The demo page and plain HTTP, through Django's test client."""

import logging

import pytest
from django.conf import settings

pytestmark = pytest.mark.django_db


def test_page_renders_the_client(client):
    response = client.get("/")
    assert response.status_code == 200
    assert [t.name for t in response.templates] == ["index.html"]
    html = response.content.decode()
    assert '<script type="module" src="/static/js/main.js"></script>' in html
    assert 'href="/static/style.css"' in html
    assert f'data-max-bytes="{settings.ECHO_MAX_MESSAGE_BYTES}"' in html
    assert "<script>" not in html  # no inline script: the JS lives in static/


def test_static_files_exist_where_the_page_and_its_modules_point(client):
    """The page's files, and every module the JS imports (a missing one fails only in a browser)."""
    import re
    from pathlib import Path

    from django.contrib.staticfiles import finders

    html = client.get("/").content.decode()
    wanted = [name.removeprefix("/static/") for name in re.findall(r'"(/static/[^"]+)"', html)]
    for name in list(wanted):
        if name.endswith(".js"):
            source = Path(finders.find(name)).read_text()
            folder = name.rsplit("/", 1)[0]
            wanted += [f"{folder}/{m}" for m in re.findall(r'from "\./([^"]+)"', source)]
    assert "js/main.js" in wanted and "js/connection.js" in wanted
    for name in wanted:
        assert finders.find(name), f"static/{name} is referenced but missing"


def test_page_refuses_post(client):
    assert client.post("/").status_code == 405


@pytest.mark.parametrize("path", ["/ws/echo/sync/", "/ws/echo/async/", "/ws/anything"])
def test_plain_http_to_a_websocket_path_is_426_not_500(client, path, caplog):
    with caplog.at_level(logging.INFO, logger="django.request"):
        response = client.get(path)
    assert response.status_code == 426
    assert response["Upgrade"] == "websocket"
    # The server's access line is the one line for it: Django logs any 4xx again at WARNING.
    assert [r for r in caplog.records if r.name == "django.request"] == []


@pytest.mark.parametrize(
    ("query", "status", "rule", "says"),
    [
        ({"path": "/ws/echo/async/"}, 101, "", "accept"),
        ({"path": "/ws/echo/sync/", "subprotocols": "echo.v1"}, 101, "", "accept"),
        ({"path": "/ws/nowhere/"}, 404, "route", "no WebSocket route at /ws/nowhere/"),
        ({"path": "/ws/echo/async/", "origin": "https://evil.example"}, 403, "origin", "evil"),
        ({"path": "/ws/broadcast/async//"}, 400, "room", "room name must be 1 to 80"),
        ({"path": "/ws/broadcast/sync/a%20b/"}, 400, "room", "may hold only"),
        ({"path": "/ws/broadcast/async/r/", "subprotocols": "rooms.v1"}, 101, "", "accept"),
        ({"path": "/ws/broadcast/async/r/?since=Ep0ch:12"}, 101, "", "accept"),
        ({"path": "/ws/broadcast/async/r/?since=bad"}, 400, "since", "since must be <epoch>"),
        ({"path": "/ws/broadcast/sync/r/?since=e:-1"}, 400, "since", "offset must be an integer"),
        ({"path": "/ws/echo/async/", "subprotocols": "rooms.v1"}, 101, "subprotocol", "echo.v1"),
        ({"path": "/ws/broadcast/async/private.x/"}, 403, "token", "no token: room private.x"),
        ({"path": "/ws/broadcast/async/open/?token=abc"}, 403, "token", "tampered token"),
        ({"path": "/ws/echo/async/", "subprotocols": "chat.v9"}, 101, "subprotocol", "echo.v1"),
        ({"path": "/ws/trace/not-a-token/"}, 403, "trace_token", "not issued to this browser"),
        ({"path": "/ws/test/?fragment=8&push=3"}, 101, "", "accept"),
        ({"path": "/ws/test/?fragment=0"}, 400, "behaviour", "fragment"),
        ({"path": "/ws/test/?speed=9"}, 400, "behaviour", "unknown parameter 'speed'"),
    ],
)
def test_handshake_check_names_the_rule_that_refuses(client, query, status, rule, says):
    from urllib.parse import unquote

    query = {key: unquote(value) for key, value in query.items()}
    verdict = client.get("/handshake-check", query).json()
    assert (verdict["status"], verdict["rule"], verdict["ok"]) == (status, rule, not rule)
    assert says in verdict["reason"]


def test_handshake_check_sees_this_sessions_trace_token(client):
    token = client.post(
        "/trace/token", HTTP_X_CSRFTOKEN=client.get("/").cookies["csrftoken"].value
    ).json()["token"]
    assert client.get("/handshake-check", {"path": f"/ws/trace/{token}/"}).json()["ok"]


def test_handshake_check_needs_an_absolute_path(client):
    assert client.get("/handshake-check", {"path": "ws/echo/async/"}).status_code == 400


def test_a_host_outside_allowed_hosts_is_a_warning_not_an_error(client, caplog):
    """Django logs it at ERROR on django.security.DisallowedHost: a client's doing."""
    with caplog.at_level(logging.INFO):
        response = client.get("/", HTTP_HOST="evil.example")
    assert response.status_code == 400
    records = [r for r in caplog.records if r.name == "django.security.DisallowedHost"]
    assert [r.levelname for r in records] == ["WARNING"], records
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
