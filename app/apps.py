from django.apps import AppConfig


class EchoAppConfig(AppConfig):
    name = "app"
    verbose_name = "WebSocket echo and broadcast"
