"""payment_service settings (environment variables, see shared.settings)."""

from __future__ import annotations

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    app_name: str = "PAYMENT-SERVICE"
    port: int = 8004
    sqlite_database = "payment_service"
