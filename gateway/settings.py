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
