"""Settings of the local Eureka-protocol registry, read from the environment by pydantic-settings."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RegistrySettings(BaseSettings):
    """Where the registry listens and how it keeps leases; every field has an env var of the same name."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8761

    # Used for an instance that registers with durationInSecs <= 0, as the real server does.
    lease_duration_default: int = Field(default=90, gt=0)
    # How often expired leases are evicted (the real server's default is 60 s; tests use ~1 s).
    eviction_interval_secs: float = Field(default=60.0, gt=0)
    # Off for local runs: one dead instance out of one would otherwise never be evicted.
    self_preservation: bool = False
    renewal_percent_threshold: float = Field(default=0.85, gt=0, le=1)
    # How long a change stays in the delta (GET /eureka/apps/delta); Eureka keeps 3 minutes.
    delta_retention_secs: float = Field(default=180.0, gt=0)

    log_level: str = "INFO"
    log_json: bool = True
