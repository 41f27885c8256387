"""Settings of the local Eureka-protocol registry, read from the environment by pydantic-settings."""

from __future__ import annotations

import re

from pydantic import Field, model_validator

from shared.settings import ServerBounds


class RegistrySettings(ServerBounds):
    """Where the registry listens and how it keeps leases; every field has an env var of the same name."""

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

    # HTTP basic credentials every /eureka call must carry, as Spring's Eureka with Spring Security asks; the
    # clients put them in their URL (http://user:password@host:8761/eureka). No default: an open registry lets
    # anyone register an instance that the gateway would then send traffic (and tokens) to.
    eureka_username: str = "eureka"
    eureka_password: str = ""

    log_level: str = "INFO"
    log_json: bool = True

    @model_validator(mode="after")
    def _credentials_required(self) -> RegistrySettings:
        if not self.eureka_username or not self.eureka_password:
            raise ValueError("EUREKA_USERNAME and EUREKA_PASSWORD must be set: the registry refuses to run open")
        # py-eureka-client reads them out of its URL with a pattern that allows only these characters.
        for name, value in (("EUREKA_USERNAME", self.eureka_username), ("EUREKA_PASSWORD", self.eureka_password)):
            if not re.fullmatch(r"[A-Za-z0-9._~-]+", value):
                raise ValueError(f"{name} may contain only letters, digits and . _ ~ -")
        return self
