"""payment_service settings (environment variables, see shared.settings)."""

from __future__ import annotations

from pydantic import model_validator

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    app_name: str = "PAYMENT-SERVICE"
    port: int = 8004

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        self.database_url = self.database_url or self.default_sqlite_url("payment_service")
        return self
