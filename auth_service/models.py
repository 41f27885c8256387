"""auth_service tables: users, signing keys, refresh-token families, revoked access tokens, failed logins."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.bus import outbox_table
from shared.db import CreatedAt, UTCDateTime, UUIDKey, new_metadata, parent_key, utc_now


class Base(DeclarativeBase):
    metadata = new_metadata()


outbox_table(Base.metadata)  # users registered, on the bus (shared/bus.py)


class Role(StrEnum):
    CUSTOMER = "customer"
    ADMIN = "admin"
    SERVICE = "service"
    # The gateway's own token: believed by auth_service for X-Forwarded-For, privileged nowhere (not a `service`).
    GATEWAY = "gateway"


class User(Base):
    __tablename__ = "users"

    id: Mapped[UUIDKey]
    # Stored lower-cased, so the unique constraint makes addresses unique case-insensitively.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(500))
    full_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    roles: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[CreatedAt]


class SigningKey(Base):
    """An RSA key pair. The newest key without `retired_at` signs; a key stays in the JWKS until `retired_at`."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    private_pem: Mapped[str] = mapped_column(Text)
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[CreatedAt]
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class RefreshFamily(Base):
    """Every refresh token descended from one login; reuse of a spent token revokes the whole family."""

    __tablename__ = "refresh_families"

    id: Mapped[UUIDKey]
    user_id: Mapped[str] = parent_key("users.id")
    created_at: Mapped[CreatedAt]
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_reason: Mapped[str | None] = mapped_column(String(100), nullable=True)


class RefreshToken(Base):
    """Only the SHA-256 of the opaque token is stored."""

    __tablename__ = "refresh_tokens"

    id: Mapped[UUIDKey]
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    family_id: Mapped[str] = parent_key("refresh_families.id")
    # The access token issued together with this one, so logout without a refresh token finds the family.
    access_jti: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[CreatedAt]
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class RevokedToken(Base):
    """Access tokens revoked before their expiry (logout); a row is useless after `expires_at`."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class LoginFailure(Base):
    """One failed login, counted under a key: `account:<email>` or `address:<client ip>`."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_key_failed_at", "key", "failed_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(400))
    failed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now, index=True)


# --- what the service layer returns -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Account:
    """A user account."""

    id: str
    email: str
    password_hash: str
    full_name: str | None
    roles: list[str]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An RSA key pair as stored: the newest one without `retired_at` signs."""

    kid: str
    private_pem: str
    public_jwk: dict[str, Any]
    created_at: datetime
    retired_at: datetime | None
