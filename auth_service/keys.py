"""Signing keys: RSA key pairs kept in the database, the public JWKS, and minting RS256 access tokens."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
import zlib
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwk, jwt
from jose.exceptions import JWTError
from sqlalchemy import bindparam, func, insert, select, update

from auth_service.models import KeyRecord, SigningKey
from auth_service.settings import Settings
from shared.auth import TokenVerifier
from shared.db import Database, Tx, table_of, utc_now
from shared.errors import ServiceUnavailable
from shared.migrations import upgrade_to_head

log = structlog.get_logger(__name__)

ALGORITHM = "RS256"
# Tokens carry exp to the second and verifiers may run a little fast: keep a retired key published this much
# longer than the longest token it may have signed.
RETIREMENT_GRACE = timedelta(seconds=60)
_KEYS_LOCK_ID = zlib.crc32(b"auth_service.signing_keys")


class SigningKeyMissing(RuntimeError):
    """Production refuses to invent its own signing key: an operator must provide one."""


def generate_private_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_jwk(private_pem: str) -> dict[str, str]:
    """The public half as a JWK, with an RFC 7638 thumbprint as kid (the same PEM gives the same kid)."""
    private_key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise ValueError("The signing key must be an RSA private key.")
    numbers = private_key.public_key().public_numbers()
    members = {"e": _b64url_uint(numbers.e), "kty": "RSA", "n": _b64url_uint(numbers.n)}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    kid = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
    return {"kty": "RSA", "kid": kid, "use": "sig", "alg": ALGORITHM, "n": members["n"], "e": members["e"]}


def new_signing_key(private_pem: str) -> KeyRecord:
    public = public_jwk(private_pem)
    return KeyRecord(kid=public["kid"], private_pem=private_pem, public_jwk=public, created_at=utc_now(),
                     retired_at=None)


keys = table_of(SigningKey)
_LOCK_KEYS = select(func.pg_advisory_xact_lock(_KEYS_LOCK_ID))
_NEWEST_FIRST = (keys.c.created_at.desc(),)
_SIGNING = select(keys.c.kid).where(keys.c.retired_at.is_(None)).limit(1)
_KEY = select(keys.c.kid).where(keys.c.kid == bindparam("w_kid"))
_INSERT_KEY = insert(keys)
_RETIRE_OTHERS = (update(keys).where(keys.c.retired_at.is_(None), keys.c.kid != bindparam("w_kid"))
                  .values(retired_at=bindparam("w_retire_at")))
_ALL_KEYS = select(*keys.c).order_by(*_NEWEST_FIRST)
_PUBLISHED = (keys.c.retired_at.is_(None)) | (keys.c.retired_at > bindparam("w_now"))
_PUBLISHED_KEYS = select(*keys.c).where(_PUBLISHED).order_by(*_NEWEST_FIRST)
_PUBLISHED_KID = select(keys.c.kid).where(keys.c.kid == bindparam("w_kid"), _PUBLISHED)


async def _lock_key_table(tx: Tx) -> None:
    """Serialize key creation across instances (SQLite's BEGIN IMMEDIATE already does)."""
    if tx.dialect == "postgresql":
        await tx.fetchval(_LOCK_KEYS)


async def _add_taking_over(tx: Tx, settings: Settings, key: KeyRecord) -> None:
    """Store `key` as the signing key. The current keys stop signing; they stay published until every token they
    signed has expired."""
    retire_at = utc_now() + timedelta(seconds=settings.access_token_ttl_secs) + RETIREMENT_GRACE
    await tx.execute(_RETIRE_OTHERS, {"w_kid": key.kid, "w_retire_at": retire_at})
    await tx.execute(_INSERT_KEY, asdict(key))


async def ensure_signing_key(tx: Tx, settings: Settings) -> None:
    """At startup: the configured PEM becomes a key row once; otherwise create a key in non-production only."""
    await _lock_key_table(tx)
    if settings.jwt_private_key_pem:
        configured = new_signing_key(settings.jwt_private_key_pem.strip() + "\n")
        if await tx.fetchval(_KEY, {"w_kid": configured.kid}) is None:
            # A new configured key (first start, or the operator replaced it) takes over signing.
            await _add_taking_over(tx, settings, configured)
            log.info("signing key installed from JWT_PRIVATE_KEY_PEM", kid=configured.kid)
        return
    if await tx.fetchval(_SIGNING) is not None:
        return
    if settings.env == "production":
        raise SigningKeyMissing(
            "ENV=production and no signing key is configured: set JWT_PRIVATE_KEY_PEM, "
            "or create one with `python -m auth_service create-signing-key`."
        )
    key = new_signing_key(generate_private_pem())
    await tx.execute(_INSERT_KEY, asdict(key))
    log.info("signing key generated", kid=key.kid)


async def rotate_signing_key(tx: Tx, settings: Settings) -> KeyRecord:
    await _lock_key_table(tx)
    key = new_signing_key(await asyncio.to_thread(generate_private_pem))
    await _add_taking_over(tx, settings, key)
    log.info("signing key rotated", kid=key.kid)
    return key


async def list_signing_keys(tx: Tx) -> list[KeyRecord]:
    return [KeyRecord(**row) for row in await tx.fetch(_ALL_KEYS)]


async def create_signing_key_command(settings: Settings) -> str:
    """`python -m auth_service create-signing-key`: migrate, then add a key that takes over signing."""
    from pathlib import Path

    await asyncio.to_thread(upgrade_to_head, Path(__file__).parent, settings.database_url)
    db = Database(settings.database_url, pool_size=1)
    try:
        async with db.transaction() as tx:
            key = await rotate_signing_key(tx, settings)
        return key.kid
    finally:
        await db.dispose()


@dataclass(frozen=True)
class MintedToken:
    token: str
    jti: str
    expires_in: int


class KeyRing:
    """This instance's copy of the key table: the key it signs with and the JWKS it publishes and trusts.

    Reloaded every few seconds (another instance may have rotated) and at once for a kid made elsewhere.
    """

    def __init__(self, db: Database, settings: Settings, verifier: TokenVerifier) -> None:
        self.db = db
        self.settings = settings
        self.verifier = verifier
        self.jwks: dict[str, Any] = {"keys": []}
        self._kid = ""
        self._signer: Any = None  # a jose key object, parsed once rather than on every token
        self._loaded_at: float | None = None  # not 0.0: time.monotonic() counts from boot
        self._lock = asyncio.Lock()

    @property
    def kid(self) -> str:
        return self._kid

    def knows(self, kid: str) -> bool:
        return any(key["kid"] == kid for key in self.jwks["keys"])

    async def load(self) -> None:
        async with self.db.autocommit() as tx:
            keys = [KeyRecord(**row) for row in await tx.fetch(_PUBLISHED_KEYS, {"w_now": utc_now()})]
        signing = next((key for key in keys if key.retired_at is None), None)
        if signing is not None and signing.kid != self._kid:
            self._signer = jwk.construct(signing.private_pem, ALGORITHM)
            self._kid = signing.kid
        self.jwks = {"keys": [dict(key.public_jwk) for key in keys]}
        self.verifier.use_keys(self.jwks)
        self._loaded_at = time.monotonic()

    async def _reload_if_older_than(self, max_age: float) -> None:
        if self._loaded_at is not None and time.monotonic() - self._loaded_at < max_age:
            return
        async with self._lock:
            if self._loaded_at is None or time.monotonic() - self._loaded_at >= max_age:
                await self.load()

    async def reload_if_stale(self) -> None:
        await self._reload_if_older_than(self.settings.signing_keys_reload_secs)

    async def reload_for(self, token: str) -> None:
        """A kid we do not know may belong to a key another instance just made: one primary-key lookup tells
        (no more than the revocation check costs, so forged kids cannot make the database work harder)."""
        await self.reload_if_stale()
        try:
            kid = str(jwt.get_unverified_header(token).get("kid", ""))
        except JWTError:
            return  # the verifier reports the malformed token
        if not kid or self.knows(kid):
            return
        async with self.db.autocommit() as tx:
            published = await tx.fetchval(_PUBLISHED_KID, {"w_kid": kid, "w_now": utc_now()})
        if published is not None:
            async with self._lock:
                if not self.knows(kid):
                    await self.load()

    async def mint(self, subject: str, roles: list[str], email: str, ttl_secs: int) -> MintedToken:
        # No reload here: mint runs inside callers' transactions, and a reload opens its own, which on
        # SQLite waits for the caller's write lock (a 30 s hang). Callers reload before they begin.
        if self._signer is None:
            raise ServiceUnavailable("No signing key is available.")
        now = int(time.time())
        jti = uuid.uuid4().hex
        claims = {
            "iss": self.settings.jwt_issuer,
            "aud": self.settings.jwt_audience,
            "sub": subject,
            "roles": roles,
            "email": email,
            "typ": "access",
            "iat": now,
            "exp": now + ttl_secs,
            "jti": jti,
        }
        token = jwt.encode(claims, self._signer, algorithm=ALGORITHM, headers={"kid": self._kid})
        return MintedToken(str(token), jti, ttl_secs)
