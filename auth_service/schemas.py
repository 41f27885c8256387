"""auth_service request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from shared.schemas import StrictModel

MIN_PASSWORD_LENGTH = 8


def normalize_email(value: str) -> str:
    """A syntactically valid, ASCII-only address, lower-cased: the key that makes emails unique."""
    try:
        # test_environment allows the reserved `.test` domain (test fleets) and skips DNS look-ups.
        result = validate_email(value, check_deliverability=False, allow_smtputf8=False, test_environment=True)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from exc
    return (result.ascii_email or result.normalized).lower()


Email = Annotated[str, StringConstraints(strip_whitespace=True, max_length=320), AfterValidator(normalize_email)]
# Long enough to resist guessing; bounded so that hashing cannot be used to burn CPU.
Password = Annotated[str, StringConstraints(min_length=MIN_PASSWORD_LENGTH, max_length=1024)]
OpaqueToken = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=512)]


class RegisterIn(StrictModel):
    email: Email
    password: Password
    full_name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)] | None = None


class LoginIn(StrictModel):
    # Not validated as an address: a login only has to match, and must not tell which addresses exist.
    email: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=320)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class RefreshIn(StrictModel):
    refresh_token: OpaqueToken


class LogoutIn(StrictModel):
    refresh_token: OpaqueToken | None = None


class ClientCredentialsIn(BaseModel):
    """The OAuth 2.0 client credentials grant (RFC 6749 §4.4), form-encoded; other form fields are ignored."""

    grant_type: Literal["client_credentials"]
    client_id: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    client_secret: Annotated[str, StringConstraints(min_length=1, max_length=500)]


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    email: str
    full_name: str | None
    roles: list[str]
    created_at: datetime  # UTC: shared.db.UTCDateTime restores the zone SQLite does not store


class TokenPairOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int


class ServiceTokenOut(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int


class IdentityOut(BaseModel):
    user_id: str
    roles: list[str]
    email: str


class SigningKeyOut(BaseModel):
    kid: str
    created_at: datetime
    retired_at: datetime | None
    signing: bool


class JwksOut(BaseModel):
    keys: list[dict[str, str]]


class RevokedTokenOut(BaseModel):
    jti: str
    exp: int = Field(description="The token's expiry (epoch seconds): it is refused after that anyway.")


class RevocationsOut(BaseModel):
    """GET /revocations: the access tokens revoked before their expiry (logouts)."""

    revoked: list[RevokedTokenOut]
