"""gateway settings (environment variables, see shared.settings); the route table is JSON in GATEWAY_ROUTES."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from gateway.routes import AUTH_APP, DEFAULT_ROUTES, Route
from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(populate_by_name=True)

    app_name: str = "GATEWAY"
    port: int = 8080
    holds_service_secret = True  # its own (GATEWAY_CLIENT_SECRET at auth_service), for its X-Forwarded-For

    routes: list[Route] = Field(
        default_factory=lambda: list(DEFAULT_ROUTES),
        validation_alias=AliasChoices("GATEWAY_ROUTES", "routes"),
        description='JSON list of {"prefix", "app", "methods", "public", "timeout_secs"}; replaces the default.',
    )
    # Pinned instances per app, used instead of the registry (tests, or a dependency outside Eureka).
    static_instances: dict[str, list[str]] = Field(
        default_factory=dict,
        validation_alias=AliasChoices("GATEWAY_STATIC_INSTANCES", "static_instances"),
    )

    auth_app: str = AUTH_APP
    validate_path: str = "/validate"
    validate_timeout_secs: float = Field(default=5.0, gt=0)
    connect_timeout_secs: float = Field(default=2.0, gt=0)
    # Instances tried when connections are refused (only while no byte of the body has been sent).
    connect_attempts: int = Field(default=3, ge=1)
    # Upstream connections kept per process (all apps together).
    upstream_pool_size: int = Field(default=1000, ge=1)
    upstream_keepalive_secs: float = Field(default=4.0, gt=0)

    # Re-sends of a request that may be repeated (idempotent method, or POST/PATCH with Idempotency-Key) after
    # an upstream answered 502/503 or dropped the connection; each goes to another instance.
    retry_attempts: int = Field(default=2, ge=0)
    # A repeatable request's body up to this size (by Content-Length) is held so it can be sent again;
    # larger or chunked bodies are streamed and never re-sent once a byte has gone.
    retry_body_max_bytes: int = Field(default=64 * 1024, ge=0)

    # Circuit breaker per instance: this many failures in a row (connection error, timeout, or one of the
    # statuses below) open it; after the cool-down one trial request decides whether it closes.
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_cooldown_secs: float = Field(default=5.0, gt=0)
    breaker_failure_statuses: list[int] = Field(default_factory=lambda: [502, 503, 504])

    # Token buckets: a sustained rate per second and a burst, per client address (before /validate) and per
    # user (after it). High defaults: a guard against floods, not a quota. 0 turns one off.
    rate_limit_address_rps: float = Field(default=5000.0, ge=0)
    rate_limit_address_burst: int = Field(default=10000, ge=0)
    rate_limit_user_rps: float = Field(default=2000.0, ge=0)
    rate_limit_user_burst: int = Field(default=4000, ge=0)
    # TRUSTED_PROXIES (shared.settings): load balancers in front of the gateway; a request from one of them is
    # limited and forwarded as the client it names in X-Forwarded-For.

    # Largest request body (the services' default is 1 MiB, shared.settings): a larger Content-Length is refused
    # at once (413, before /validate), a chunked body is cut off there and the upstream request aborted.
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=0)

    # The merged OpenAPI document (GET /openapi.json): how long it is reused, how long one service may take.
    openapi_cache_secs: float = Field(default=10.0, ge=0)
    openapi_fetch_timeout_secs: float = Field(default=3.0, gt=0)

    # The dashboard's live event stream (dashboard/live.py): a comment this often keeps proxies from closing a
    # quiet stream (and the page's token is checked again).
    dashboard_heartbeat_secs: float = Field(default=15.0, gt=0)
