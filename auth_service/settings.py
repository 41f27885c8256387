"""auth_service settings (environment variables, see shared.settings)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from shared.settings import MIN_SERVICE_SECRET_LENGTH, ServiceSettings

# The local runner's demo admin password: fine on a laptop, refused in production.
DEV_ADMIN_PASSWORD = "admin-password-dev"

# The clients that get service tokens: the orchestrator (the saga's calls) and the gateway (its own secret). The
# saga's participants call nobody with a token and hold no client secret.
DEFAULT_SERVICE_CLIENT_IDS = ["saga-orchestrator", "gateway"]


class Settings(ServiceSettings):
    app_name: str = "AUTH-SERVICE"
    port: int = 8001
    sqlite_database = "auth_service"
    holds_service_secret = True  # it checks SERVICE_CLIENT_SECRET at /api/auth/token

    access_token_ttl_secs: int = 900
    refresh_token_ttl_secs: int = 14 * 24 * 3600

    # A PEM private key (PKCS#8 or PKCS#1) to sign with; otherwise keys live in the database.
    jwt_private_key_pem: str = ""
    # How often an instance re-reads the key table (to pick up a rotation made by another instance).
    signing_keys_reload_secs: int = 30

    # Comma-separated in the environment: SERVICE_CLIENT_IDS=saga-orchestrator,gateway
    service_client_ids: Annotated[list[str], NoDecode] = DEFAULT_SERVICE_CLIENT_IDS

    # The client id whose service token, sent by the gateway in X-Gateway-Authorization, makes its
    # X-Forwarded-For believed (login throttling per client).
    gateway_client_id: str = "gateway"
    # That client's own secret (the gateway's SERVICE_CLIENT_SECRET), not the one the other services share: a
    # service that holds theirs cannot mint the gateway's token. Empty: no token for the gateway's client id.
    gateway_client_secret: str = ""

    bootstrap_admin_email: str = ""
    bootstrap_admin_password: str = ""

    # Brute-force protection (OWASP): failed logins counted in a sliding window per account *and client address*
    # (that pair is refused past the limit: an attacker elsewhere never locks the owner out) and per client
    # address (password spraying). Wrong client secrets at /api/auth/token count per client id and address.
    login_failure_window_secs: int = 900
    login_max_failures_per_account: int = 5
    login_max_failures_per_address: int = 20
    # Each failure for an account beyond its second, from any client, waits this much longer before it is
    # answered (capped at 2 s): a distributed guesser slows down, the owner's correct login is never delayed.
    login_failure_delay_secs: float = 0.25
    # Argon2 costs ~260 ms of CPU per register or login: tokens per second and burst per client address
    # (shared.ratelimit's token bucket, per process); past them 429. 0 turns it off.
    password_hash_rate_per_address: float = Field(default=0.5, ge=0)
    password_hash_burst_per_address: int = Field(default=10, ge=0)

    @field_validator("service_client_ids", mode="before")
    @classmethod
    def _split_client_ids(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _auth_defaults(self) -> Settings:
        if self.env == "production" and self.bootstrap_admin_password == DEV_ADMIN_PASSWORD:
            raise ValueError("BOOTSTRAP_ADMIN_PASSWORD must not be the development demo password when ENV=production")
        if self.env == "production" and (len(self.gateway_client_secret) < MIN_SERVICE_SECRET_LENGTH
                                          or self.gateway_client_secret == self.service_client_secret):
            raise ValueError(f"GATEWAY_CLIENT_SECRET must be configured (at least {MIN_SERVICE_SECRET_LENGTH} "
                             "characters, not SERVICE_CLIENT_SECRET) when ENV=production")
        return self
