"""auth_service domain rules: accounts, login with brute-force protection, refresh-token rotation, revocation.

`AuthService` is the one door the routes use. It owns its transactions because some refusals must still be
recorded (a failed login, a reused refresh token revoking its family) before the refusal is raised.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from jose import jwt
from jose.exceptions import JWTError
from pwdlib import PasswordHash
from sqlalchemy import bindparam, delete, func, insert, select, update

from auth_service.keys import KeyRing, list_signing_keys, rotate_signing_key
from auth_service.models import (
    Account,
    KeyRecord,
    LoginFailure,
    RefreshFamily,
    RefreshToken,
    RevokedToken,
    Role,
    User,
)
from auth_service.schemas import MIN_PASSWORD_LENGTH, normalize_email
from auth_service.settings import Settings
from shared import events
from shared.auth import Identity, RevokedSet, TokenVerifier
from shared.bus import emit
from shared.db import Database, Row, Tx, conflict_insert, table_of, utc_now
from shared.errors import Conflict, DomainError, NotFound, TooManyRequests, Unauthorized
from shared.ratelimit import TokenBucketLimiter

log = structlog.get_logger(__name__)

BAD_CREDENTIALS = "The email or password is not correct."
BAD_REFRESH = "The refresh token is not valid."
_hasher = PasswordHash.recommended()


async def _registered(tx: Tx, user: Row, role: Role) -> None:
    """A new account on the bus: its id and role only (no email, no name, no password hash)."""
    await emit(tx, events.UserRegistered(user_id=user["id"], role=role), subject=user["id"])


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def hash_password(password: str) -> str:
    # Argon2 takes tens of milliseconds of CPU: keep it off the event loop.
    return await asyncio.to_thread(_hasher.hash, password)


async def _verify_password(password: str, password_hash: str) -> tuple[bool, str | None]:
    return await asyncio.to_thread(_hasher.verify_and_update, password, password_hash)


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


@dataclass(frozen=True)
class VerifiedToken:
    identity: Identity
    jti: str
    expires_at: datetime


users = table_of(User)
families = table_of(RefreshFamily)
refresh_tokens = table_of(RefreshToken)
revoked = table_of(RevokedToken)
failures = table_of(LoginFailure)

_USER = select(*users.c).where(users.c.id == bindparam("w_id"))
_USER_BY_EMAIL = select(*users.c).where(users.c.email == bindparam("w_email"))
# A concurrent registration of the same address: the second finds the row taken (no row returned).
_CREATE_USER = conflict_insert(users).on_conflict_do_nothing(index_elements=[users.c.email]).returning(*users.c)
_UPDATE_USER = update(users).where(users.c.id == bindparam("w_id"))
_RECENT_FAILURES = (select(failures.c.failed_at)
                    .where(failures.c.key == bindparam("w_key"), failures.c.failed_at > bindparam("w_since"))
                    .order_by(failures.c.failed_at.desc()).limit(bindparam("w_limit")))
_COUNT_FAILURES = (select(func.count()).select_from(failures)
                   .where(failures.c.key == bindparam("w_key"), failures.c.failed_at > bindparam("w_since")))
_INSERT_FAILURE = insert(failures)
_FORGET_OLD_FAILURES = delete(failures).where(failures.c.failed_at <= bindparam("w_since"))
_FORGET_FAILURES_OF = delete(failures).where(failures.c.key == bindparam("w_key"))
_NEW_FAMILY = insert(families).returning(families.c.id)
# The family row lock serializes rotations and revocations of one family across instances.
_LOCK_FAMILY = select(*families.c).where(families.c.id == bindparam("w_id")).with_for_update()
_UPDATE_FAMILY = update(families).where(families.c.id == bindparam("w_id"))
_INSERT_REFRESH = insert(refresh_tokens)
_REFRESH = select(*refresh_tokens.c).where(refresh_tokens.c.id == bindparam("w_id"))
_REFRESH_BY_HASH = select(*refresh_tokens.c).where(refresh_tokens.c.token_hash == bindparam("w_hash"))
_REFRESH_BY_ACCESS = select(*refresh_tokens.c).where(refresh_tokens.c.access_jti == bindparam("w_jti")).limit(1)
_UPDATE_REFRESH = update(refresh_tokens).where(refresh_tokens.c.id == bindparam("w_id"))
# A concurrent logout with the same token has revoked it already.
_REVOKE_ACCESS = conflict_insert(revoked).on_conflict_do_nothing(index_elements=[revoked.c.jti])
_REVOKED = select(revoked.c.jti, revoked.c.expires_at).where(revoked.c.expires_at > bindparam("w_now"))
_FORGET_EXPIRED_REVOKED = delete(revoked).where(revoked.c.expires_at < bindparam("w_now"))


class AuthService:
    def __init__(self, db: Database, settings: Settings, keyring: KeyRing, verifier: TokenVerifier) -> None:
        self.db = db
        self.settings = settings
        self.keyring = keyring
        self.verifier = verifier
        self._dummy_hash = ""
        self._hashing = TokenBucketLimiter(settings.password_hash_rate_per_address,
                                           settings.password_hash_burst_per_address)

    # --- accounts -------------------------------------------------------------------------------

    async def register(self, email: str, password: str, full_name: str | None, address: str) -> Account:
        self._refuse_if_hashing_too_often(address)
        password_hash = await hash_password(password)
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(_CREATE_USER, {"email": email, "password_hash": password_hash,
                                                   "full_name": full_name, "roles": [Role.CUSTOMER]})
            if row is not None:
                await _registered(tx, row, Role.CUSTOMER)
        if row is None:
            raise Conflict("An account with this email already exists.")
        return Account(**row)

    async def get_user(self, user_id: str) -> Account:
        async with self.db.autocommit() as tx:
            row = await tx.fetchrow(_USER, {"w_id": user_id})
        if row is None:
            raise NotFound("The caller is not a user account.")
        return Account(**row)

    async def ensure_bootstrap_admin(self) -> None:
        """Startup: make sure the configured admin account exists and has the admin role.

        An existing account keeps its password: the setting bootstraps, it does not reset.
        """
        raw_email, password = self.settings.bootstrap_admin_email, self.settings.bootstrap_admin_password
        if not (raw_email and password):
            if raw_email or password:
                log.warning("bootstrap admin ignored: set both BOOTSTRAP_ADMIN_EMAIL and BOOTSTRAP_ADMIN_PASSWORD")
            return
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ValueError(f"BOOTSTRAP_ADMIN_PASSWORD must have at least {MIN_PASSWORD_LENGTH} characters")
        email = normalize_email(raw_email)
        password_hash = await hash_password(password)
        for _ in range(2):  # a second pass if another instance created the account meanwhile
            async with self.db.transaction() as tx:
                user = await tx.fetchrow(_USER_BY_EMAIL, {"w_email": email})
                if user is not None:
                    if Role.ADMIN not in user["roles"]:
                        await tx.execute(_UPDATE_USER, {"w_id": user["id"], "roles": [*user["roles"], Role.ADMIN]})
                    return
                created = await tx.fetchrow(_CREATE_USER, {"email": email, "password_hash": password_hash,
                                                           "full_name": "Administrator", "roles": [Role.ADMIN]})
                if created is not None:  # an account like any other: a consumer counting accounts sees it
                    await _registered(tx, created, Role.ADMIN)
            if created is not None:
                log.info("bootstrap admin created", email=email)
                return

    # --- login ----------------------------------------------------------------------------------

    async def login(self, raw_email: str, password: str, address: str) -> TokenPair:
        email = raw_email.strip().lower()
        # Refused past the limits: this account from this client, and this client for all accounts. The account
        # alone only slows down (its failures from every client), so nobody can lock its owner out.
        client_key, address_key, account_key = f"account:{email}|{address}", f"address:{address}", f"account:{email}"
        await self.keyring.reload_if_stale()  # before any transaction: see KeyRing.mint
        async with self.db.transaction() as tx:
            await self._refuse_if_throttled(tx, ((client_key, self.settings.login_max_failures_per_account),
                                                 (address_key, self.settings.login_max_failures_per_address)))
            row = await tx.fetchrow(_USER_BY_EMAIL, {"w_email": email})
        user = None if row is None else Account(**row)
        self._refuse_if_hashing_too_often(address)
        # An unknown address costs the same hashing as a wrong password, so timing does not reveal accounts.
        valid, new_hash = await _verify_password(password, user.password_hash if user else await self._dummy())
        if user is None or not valid:
            async with self.db.transaction() as tx:
                failures_now = await self._record_failure(tx, (client_key, address_key, account_key), account_key)
            await self._slow_down(failures_now)
            raise Unauthorized(BAD_CREDENTIALS)
        async with self.db.transaction() as tx:
            await tx.execute(_FORGET_FAILURES_OF, {"w_key": client_key})
            if new_hash is not None:  # the hashing parameters were raised since this hash was made
                await tx.execute(_UPDATE_USER, {"w_id": user.id, "password_hash": new_hash})
            return await self._issue_pair(tx, user)

    async def _dummy(self) -> str:
        if not self._dummy_hash:
            self._dummy_hash = await hash_password(secrets.token_urlsafe(16))
        return self._dummy_hash

    def _refuse_if_hashing_too_often(self, address: str) -> None:
        """Argon2 is the costly part of register and login: a bucket per client address bounds its CPU."""
        if not self._hashing.enabled:
            return
        verdict = self._hashing.hit(address)
        if not verdict.allowed:
            raise TooManyRequests("Too many registrations or logins from this address; try again later.",
                                  retry_after=verdict.retry_after_secs)

    async def _slow_down(self, failures: int) -> None:
        """Each failure of an account beyond its second waits longer before its answer (at most 2 s)."""
        await asyncio.sleep(min(2.0, self.settings.login_failure_delay_secs * max(0, failures - 2)))

    async def _refuse_if_throttled(self, tx: Tx, limits: tuple[tuple[str, int], ...]) -> None:
        for key, limit in limits:
            retry_after = await self._retry_after(tx, key, limit)
            if retry_after is not None:
                raise TooManyRequests("Too many failed logins; try again later.", retry_after=retry_after)

    async def _retry_after(self, tx: Tx, key: str, limit: int) -> int | None:
        """Seconds until fewer than `limit` failures remain in the sliding window, or None when not locked."""
        now = utc_now()
        window = timedelta(seconds=self.settings.login_failure_window_secs)
        rows = await tx.fetch(_RECENT_FAILURES, {"w_key": key, "w_since": now - window, "w_limit": limit})
        recent = [row["failed_at"] for row in rows]
        if len(recent) < limit:
            return None
        # The limit-th most recent failure leaving the window is what lets the next attempt in.
        return max(1, math.ceil((recent[-1] + window - now).total_seconds()))

    async def _record_failure(self, tx: Tx, keys: tuple[str, ...], counted: str) -> int:
        """One failure under each of `keys`; returns how many `counted` has in the window, this one included."""
        now = utc_now()
        since = now - timedelta(seconds=self.settings.login_failure_window_secs)
        await tx.execute(_FORGET_OLD_FAILURES, {"w_since": since})
        await tx.executemany(_INSERT_FAILURE, [{"key": key, "failed_at": now} for key in keys])
        return int(await tx.fetchval(_COUNT_FAILURES, {"w_key": counted, "w_since": since}))

    # --- refresh tokens -------------------------------------------------------------------------

    async def _issue_pair(self, tx: Tx, user: Account, family_id: str | None = None) -> TokenPair:
        if family_id is None:
            family_id = str(await tx.fetchval(_NEW_FAMILY, {"user_id": user.id}))
        access = await self.keyring.mint(user.id, list(user.roles), user.email, self.settings.access_token_ttl_secs)
        refresh = secrets.token_urlsafe(32)
        await tx.execute(_INSERT_REFRESH, {
            "token_hash": _sha256(refresh), "family_id": family_id, "access_jti": access.jti,
            "expires_at": utc_now() + timedelta(seconds=self.settings.refresh_token_ttl_secs),
        })
        return TokenPair(access.token, refresh, access.expires_in)

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Rotate: the presented token is spent and a new pair issued in the same family.

        Presenting a spent token means it was copied: the whole family is revoked, the thief's copy and the
        legitimate one alike, and the user logs in again.
        """
        reused_family: str | None = None
        await self.keyring.reload_if_stale()  # before any transaction: see KeyRing.mint
        async with self.db.transaction() as tx:
            token = await tx.fetchrow(_REFRESH_BY_HASH, {"w_hash": _sha256(refresh_token)})
            if token is None:
                raise Unauthorized(BAD_REFRESH)
            family = await tx.fetchrow(_LOCK_FAMILY, {"w_id": token["family_id"]})
            token = await tx.fetchrow(_REFRESH, {"w_id": token["id"]})  # as it is now the family is locked
            assert family is not None and token is not None  # rows are deleted only with their family's user
            if family["revoked_at"] is not None:
                raise Unauthorized("The refresh token has been revoked.")
            if token["used_at"] is not None:
                await tx.execute(_UPDATE_FAMILY, {"w_id": family["id"], "revoked_at": utc_now(),
                                                  "revoked_reason": "reuse"})
                reused_family = family["id"]
            elif token["expires_at"] <= utc_now():
                raise Unauthorized("The refresh token has expired.")
            else:
                user = await tx.fetchrow(_USER, {"w_id": family["user_id"]})
                if user is None:
                    raise Unauthorized(BAD_REFRESH)
                await tx.execute(_UPDATE_REFRESH, {"w_id": token["id"], "used_at": utc_now()})
                return await self._issue_pair(tx, Account(**user), family["id"])
        # Committed above: the revocation stands although the request is refused.
        log.warning("refresh token reused; family revoked", family_id=reused_family)
        raise Unauthorized("The refresh token was already used; the session has been revoked.")

    # --- access tokens --------------------------------------------------------------------------

    async def validate(self, token: str) -> VerifiedToken:
        """Signature, issuer, audience, expiry, type and revocation by the shared verifier, all in memory: the
        revocation list is this instance's copy of the table (Revocations), refreshed every poll interval."""
        await self.keyring.reload_for(token)
        try:
            claims = jwt.get_unverified_claims(token)
        except (JWTError, RecursionError) as exc:
            # Malformed (or JSON nested past the parser's depth, before any signature check): never a 500.
            raise Unauthorized("The token is malformed.") from exc
        if isinstance(claims, dict) and claims:
            defect = _claims_defect(claims)
            if defect:
                raise Unauthorized(f"The token is not valid: {defect}.")
        identity = await self.verifier.verify(token)
        return VerifiedToken(identity, identity.jti, datetime.fromtimestamp(int(claims["exp"]), UTC))

    async def revoked_tokens(self) -> RevokedSet:
        """The table of revoked, unexpired access tokens: what every instance and service polls (GET /revocations)."""
        async with self.db.autocommit() as tx:  # one SELECT: no BEGIN/ROLLBACK round trips
            rows = await tx.fetch(_REVOKED, {"w_now": utc_now()})
        return {row["jti"]: row["expires_at"].timestamp() for row in rows}

    async def logout(self, caller: VerifiedToken, refresh_token: str | None) -> None:
        """Revoke the access token until it expires, and the refresh family it belongs to."""
        now = utc_now()
        async with self.db.transaction() as tx:
            await tx.execute(_REVOKE_ACCESS, {"jti": caller.jti, "expires_at": caller.expires_at})
            if refresh_token:
                token = await tx.fetchrow(_REFRESH_BY_HASH, {"w_hash": _sha256(refresh_token)})
            else:
                token = await tx.fetchrow(_REFRESH_BY_ACCESS, {"w_jti": caller.jti})
            if token is not None:
                family = await tx.fetchrow(_LOCK_FAMILY, {"w_id": token["family_id"]})
                # Someone else's refresh token is left alone: a caller ends only their own sessions.
                if family is not None and family["user_id"] == caller.identity.subject \
                        and family["revoked_at"] is None:
                    await tx.execute(_UPDATE_FAMILY, {"w_id": family["id"], "revoked_at": now,
                                                      "revoked_reason": "logout"})
            await tx.execute(_FORGET_EXPIRED_REVOKED, {"w_now": now})
        if self.verifier.revocations is not None:  # refused here at once; elsewhere within one poll interval
            self.verifier.revocations.add(caller.jti, caller.expires_at.timestamp())

    # --- services -------------------------------------------------------------------------------

    async def is_gateway(self, authorization: str) -> bool:
        """Whether `Bearer <token>` is the gateway's own service token (verified in memory, never raises)."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        try:
            identity = await self.verifier.verify(token.strip())
        except DomainError:
            return False
        return Role.GATEWAY in identity.roles and identity.subject == f"service:{self.settings.gateway_client_id}"

    async def issue_service_token(self, client_id: str, client_secret: str, address: str) -> tuple[str, int]:
        """Client credentials; wrong secrets are throttled as wrong passwords are, per client id and address."""
        client_key = f"client:{client_id}|{address}"
        async with self.db.transaction() as tx:
            await self._refuse_if_throttled(tx, ((client_key, self.settings.login_max_failures_per_account),))
        known = client_id in self.settings.service_client_ids
        # The gateway's client id has a secret of its own (its token makes auth_service believe X-Forwarded-For);
        # every other service shares SERVICE_CLIENT_SECRET. None configured: no such token (no default secret).
        is_gateway = client_id == self.settings.gateway_client_id
        configured = self.settings.gateway_client_secret if is_gateway else self.settings.service_client_secret
        secret_ok = bool(configured) and hmac.compare_digest(client_secret.encode(), configured.encode())
        if not (known and secret_ok):
            async with self.db.transaction() as tx:
                failures_now = await self._record_failure(tx, (client_key,), client_key)
            await self._slow_down(failures_now)
            raise Unauthorized("The client credentials are not valid.")
        await self.keyring.reload_if_stale()
        # The gateway's token only vouches for its X-Forwarded-For here: it opens no service's internal endpoints.
        minted = await self.keyring.mint(f"service:{client_id}", [Role.GATEWAY if is_gateway else Role.SERVICE], "",
                                         self.settings.access_token_ttl_secs)
        return minted.token, minted.expires_in

    # --- signing keys ---------------------------------------------------------------------------

    async def rotate_keys(self) -> KeyRecord:
        async with self.db.transaction() as tx:
            key = await rotate_signing_key(tx, self.settings)
        await self.keyring.load()
        return key

    async def signing_keys(self) -> list[KeyRecord]:
        async with self.db.autocommit() as tx:
            return await list_signing_keys(tx)


def _header_safe(value: object) -> bool:
    return isinstance(value, str) and value.isascii() and value.isprintable() and "," not in value


def _claims_defect(claims: dict[str, Any]) -> str:
    """What /validate's answer could not carry: the identity travels in X-User-* headers, so it must be printable
    ASCII; roles a list of names; exp a plausible time. Empty when the shape is fine."""
    roles = claims.get("roles", [])
    if not isinstance(roles, list) or not all(_header_safe(role) for role in roles):
        return "roles must be a list of names"
    if not _header_safe(claims.get("sub", "")) or not (claims.get("email", "") == "" or
                                                        _header_safe(claims.get("email"))):
        return "the subject or email is not printable ASCII"
    exp = claims.get("exp")
    if exp is not None and (isinstance(exp, bool) or not isinstance(exp, int | float) or not 0 < exp < 10**11):
        return "exp is not a plausible time"
    return ""
