"""The settings every service shares, read from the environment by pydantic-settings."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.forwarded import Network, parse_networks

# auth_service's app name in the registry. It is never resolved there: see ServiceSettings.auth_urls.
AUTH_APP = "AUTH-SERVICE"
# The shortest SERVICE_CLIENT_SECRET production accepts (the local runner generates 48 hex characters).
MIN_SERVICE_SECRET_LENGTH = 32


class ServerBounds(BaseSettings):
    """Where a server listens and what it bears from one client (shared/server.py, shared/body_limit.py)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    # The request line plus headers: larger → 431 and the connection closed (nginx's default is 32 KiB).
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    # From the connection (or a request's first byte) to its last header: longer → 408 and closed (slowloris).
    header_read_timeout_secs: float = Field(default=10.0, gt=0)
    # An idle keep-alive connection is closed after this long (uvicorn's timeout_keep_alive).
    keep_alive_timeout_secs: int = Field(default=5, ge=1)
    # The request body: a larger Content-Length → 413 before a byte is read; a chunked body is cut off there.
    max_body_bytes: int = Field(default=1024 * 1024, ge=0)
    # Between two pieces of a request's body: longer → 408 (nginx's client_body_timeout; a slow-body client
    # holds a connection and a task no longer than this per piece).
    body_read_timeout_secs: float = Field(default=10.0, gt=0)


class ServiceSettings(ServerBounds):
    """Base class of every service's settings; each service sets its own defaults for name and port."""

    env: Literal["development", "test", "production"] = "development"
    app_name: str = "SERVICE"
    # The address other services reach this instance at (registered in Eureka).
    instance_host: str = "127.0.0.1"

    database_url: str = ""
    # Development default when DATABASE_URL is empty: the service's own SQLite file var/<name>.db (None: the
    # service keeps no database). Refused when ENV=production.
    sqlite_database: ClassVar[str | None] = None
    db_pool_size: int = 10  # connections kept open; a request waits for a free one (then 503)
    run_migrations: bool = True

    # Empty disables registration and discovery (used by in-process unit tests). The registry's credentials go
    # in the URL, as py-eureka-client expects them: http://eureka:PASSWORD@host:8761/eureka.
    eureka_server_url: str = "http://127.0.0.1:8761/eureka"
    eureka_renewal_interval_secs: int = 30
    eureka_lease_duration_secs: int = 90

    log_level: str = "INFO"
    log_json: bool = True

    # Where auth_service is, fixed by configuration (comma-separated base URLs): the token keys (JWKS), the
    # revocation list, service tokens and the gateway's forward-auth come from here and never from the
    # registry, so whoever manages to register an AUTH-SERVICE instance does not become the authority.
    auth_urls: Annotated[tuple[str, ...], NoDecode] = ("http://127.0.0.1:8001",)
    # The JWKS to trust, if not auth_service's own /jwks at AUTH_URLS.
    auth_jwks_url: str = ""
    jwt_issuer: str = "customer-service-auth"
    jwt_audience: str = "customer-service"
    jwks_cache_secs: int = 300
    # Revocations (logouts) reach every service and every auth_service replica within one poll interval; a
    # list not refreshed for the staleness bound makes tokens refused (503) rather than checked against it.
    revocation_poll_secs: float = Field(default=2.0, gt=0)
    revocation_max_staleness_secs: float = Field(default=30.0, gt=0)

    # Service-to-service credentials (client credentials grant at auth_service). No default: a published one
    # would let anyone mint a service token. The local runner generates one at first run (var/secrets.json);
    # empty means no service tokens (auth_service grants none, a service needing one fails its call).
    service_client_id: str = ""
    service_client_secret: str = ""
    # Whether this service holds a client secret at all: the saga orchestrator and the gateway mint service tokens,
    # auth_service checks them. The saga's participants call nobody with a token, so they are given none: a
    # participant an attacker takes over cannot mint the token that calls the others' steps and compensations.
    holds_service_secret: ClassVar[bool] = False

    idempotency_ttl_secs: int = 24 * 3600

    # /metrics answers only this bearer token (a Prometheus scrape credential) or an admin's access token.
    # Empty: admins only.
    metrics_token: str = ""

    # Proxies in front of this service (comma-separated addresses and CIDR networks) whose X-Forwarded-For
    # names the client (shared/forwarded.py): the gateway's load balancers at the gateway (rate limits, the
    # chain it forwards), the gateway at auth_service (login throttling). Empty: nobody is trusted, every
    # request is the client at the other end of the socket — the default everywhere, production included.
    trusted_proxies: Annotated[tuple[Network, ...], NoDecode] = ()

    # The event bus (NATS JetStream, shared/bus.py) and this service's own user on it (it may publish only its own
    # subjects). Empty NATS_URL: events wait in the outbox and nothing is consumed (the in-process tests).
    nats_url: str = ""
    nats_user: str = ""
    nats_password: str = ""
    # How often a relay looks for events another replica wrote (its own it publishes at once after the commit).
    bus_poll_secs: float = Field(default=1.0, gt=0)
    # Deliveries of one event to a consumer whose handler fails, before it goes to the dead-letter stream.
    bus_max_deliver: int = Field(default=5, ge=1, le=100)
    # An event delivered to a consumer and not acked within this long (its process died) is delivered again.
    bus_ack_wait_secs: float = Field(default=30.0, ge=1)
    # The bench's comparison only: the relay off (events stay in the outbox).
    bus_relay: bool = True

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

    @field_validator("auth_urls", mode="before")
    @classmethod
    def _urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            return tuple(str(url).strip().rstrip("/") for url in value if str(url).strip())
        return value

    @model_validator(mode="after")
    def _refuse_dev_defaults_in_production(self) -> ServiceSettings:
        if self.env == "production":
            if self.holds_service_secret and len(self.service_client_secret) < MIN_SERVICE_SECRET_LENGTH:
                raise ValueError(f"SERVICE_CLIENT_SECRET must be configured (at least {MIN_SERVICE_SECRET_LENGTH} "
                                 "characters) when ENV=production")
            if self.eureka_server_url and not urlsplit(self.eureka_server_url).password:
                raise ValueError("EUREKA_SERVER_URL must carry the registry's credentials when ENV=production "
                                 "(http://user:password@host:8761/eureka)")
            if self.nats_url and not self.nats_password:
                raise ValueError("NATS_USER and NATS_PASSWORD must be configured when ENV=production (the bus "
                                 "takes nobody anonymous)")
            if self.fault_injection:
                raise ValueError("FAULT_INJECTION cannot be enabled when ENV=production")
            if not self.database_url and self.sqlite_database:  # the gateway keeps no database
                raise ValueError("DATABASE_URL must be configured when ENV=production")
        if not self.database_url and self.sqlite_database:
            self.database_url = f"sqlite+aiosqlite:///var/{self.sqlite_database}.db"
        return self
