"""carrier_service settings (environment variables, see shared.settings)."""

from __future__ import annotations

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    app_name: str = "CARRIER-SERVICE"
    port: int = 8005
    sqlite_database = "carrier_service"
