"""The demo page and plain HTTP, through Django's test client."""

import pytest
from django.conf import settings

pytestmark = pytest.mark.django_db


def test_page_renders_the_client(client):
    response = client.get("/")
    assert response.status_code == 200
    assert [t.name for t in response.templates] == ["index.html"]
    html = response.content.decode()
    assert '<script src="/static/app.js" defer></script>' in html
    assert 'href="/static/style.css"' in html
    assert f'data-max-bytes="{settings.ECHO_MAX_MESSAGE_BYTES}"' in html
    assert "<script>" not in html  # no inline script: the JS lives in static/


@pytest.mark.parametrize("name", ["app.js", "style.css"])
def test_static_files_exist_where_the_page_points(name):
    from django.contrib.staticfiles import finders

    assert finders.find(name), f"static/{name} is referenced by the page but missing"


def test_page_refuses_post(client):
    assert client.post("/").status_code == 405


@pytest.mark.parametrize("path", ["/ws/echo/sync/", "/ws/echo/async/", "/ws/anything"])
def test_plain_http_to_a_websocket_path_is_426_not_500(client, path):
    response = client.get(path)
    assert response.status_code == 426
    assert response["Upgrade"] == "websocket"
