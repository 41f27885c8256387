"""The settings every service shares, read from the environment by pydantic-settings."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.forwarded import Network, parse_networks

# Clearly-marked development default: services refuse it when ENV=production.
DEV_SERVICE_CLIENT_SECRET = "dev-only-service-secret-change-me"


class ServiceSettings(BaseSettings):
    """Base class of every service's settings; each service sets its own defaults for name and port."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore")

    env: Literal["development", "test", "production"] = "development"
    app_name: str = "SERVICE"
    host: str = "127.0.0.1"
    port: int = 8000
    # The address other services reach this instance at (registered in Eureka).
    instance_host: str = "127.0.0.1"

    database_url: str = ""
    # Development default when DATABASE_URL is empty: the service's own SQLite file var/<name>.db (None: the
    # service keeps no database). Refused when ENV=production.
    sqlite_database: ClassVar[str | None] = None
    db_pool_size: int = 10  # connections kept open; a request waits for a free one (then 503)
    run_migrations: bool = True

    # Empty disables registration and discovery (used by in-process unit tests).
    eureka_server_url: str = "http://127.0.0.1:8761/eureka"
    eureka_renewal_interval_secs: int = 30
    eureka_lease_duration_secs: int = 90

    log_level: str = "INFO"
    log_json: bool = True

    # How services verify tokens: JWKS of AUTH-SERVICE (resolved from the registry) unless set.
    auth_jwks_url: str = ""
    jwt_issuer: str = "customer-service-auth"
    jwt_audience: str = "customer-service"
    jwks_cache_secs: int = 300

    # Service-to-service credentials (client credentials grant at auth_service).
    service_client_id: str = ""
    service_client_secret: str = DEV_SERVICE_CLIENT_SECRET

    idempotency_ttl_secs: int = 24 * 3600

    # Proxies in front of this service (comma-separated addresses and CIDR networks) whose X-Forwarded-For
    # names the client (shared/forwarded.py): the gateway's load balancers at the gateway (rate limits, the
    # chain it forwards), the gateway at auth_service (login throttling). Empty: nobody is trusted, every
    # request is the client at the other end of the socket — the default everywhere, production included.
    trusted_proxies: Annotated[tuple[Network, ...], NoDecode] = ()

    # Tests and drills only: POST /_faults makes matching requests fail or slow down.
    fault_injection: bool = False

    # OpenTelemetry (shared/tracing.py), off by default. The exporter reads its own OTEL_EXPORTER_OTLP_* variables.
    otel_enabled: bool = False
    otel_traces_exporter: Literal["otlp", "console", "memory", "none"] = "otlp"

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        # From the environment a plain "10.0.0.0/8, 192.0.2.7" rather than JSON; a bad entry stops startup.
        return parse_networks(value) if isinstance(value, str | list | tuple) else value

    @model_validator(mode="after")
    def _refuse_dev_defaults_in_production(self) -> ServiceSettings:
        if self.env == "production":
            if self.service_client_secret == DEV_SERVICE_CLIENT_SECRET:
                raise ValueError("SERVICE_CLIENT_SECRET must be configured when ENV=production")
            if self.fault_injection:
                raise ValueError("FAULT_INJECTION cannot be enabled when ENV=production")
            if not self.database_url:
                raise ValueError("DATABASE_URL must be configured when ENV=production")
        if not self.database_url and self.sqlite_database:
            self.database_url = f"sqlite+aiosqlite:///var/{self.sqlite_database}.db"
        return self
