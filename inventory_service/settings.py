"""inventory_service settings (environment variables, see shared.settings)."""

from __future__ import annotations

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    app_name: str = "INVENTORY-SERVICE"
    port: int = 8003
    sqlite_database = "inventory_service"
