"""order_service settings (environment variables, see shared.settings)."""

from __future__ import annotations

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    app_name: str = "ORDER-SERVICE"
    port: int = 8002
    sqlite_database = "order_service"
