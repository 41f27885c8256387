"""inventory_service settings (environment variables, see shared.settings)."""

from __future__ import annotations

from pydantic import model_validator

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    app_name: str = "INVENTORY-SERVICE"
    port: int = 8003

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        self.database_url = self.database_url or self.default_sqlite_url("inventory_service")
        return self
