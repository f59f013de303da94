from django.contrib.auth import views as auth_views
from django.urls import path, re_path

from app import views

urlpatterns = [
    path("", views.index, name="index"),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", views.metrics_view, name="metrics"),
    path("handshake-check", views.handshake_check, name="handshake-check"),
    path("trace/token", views.trace_token, name="trace-token"),
    path("rooms/<str:room>/token", views.room_token, name="room-token"),
    path("rooms/<str:room>/presence", views.room_presence, name="room-presence"),
    # Signing in: a signed-in user is issued room tokens (POST /rooms/<room>/token).
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page="/"), name="logout"),
    re_path(r"^ws/", views.websocket_only, name="websocket-only"),
]
