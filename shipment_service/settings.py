"""shipment_service settings (environment variables, see shared.settings)."""

from __future__ import annotations

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    app_name: str = "SHIPMENT-SERVICE"
    port: int = 8006
    sqlite_database = "shipment_service"
