"""Token verification for every service: RS256 JWTs checked against auth_service's JWKS (cached) and against
its revocation list (held in memory, refreshed by a short poll: a logout reaches every service in bounded time)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import structlog
from fastapi import Depends, Request
from jose import jwk, jwt
from jose.backends.base import Key
from jose.exceptions import JOSEError, JWTError

from shared.errors import Forbidden, ServiceUnavailable, Unauthorized
from shared.http_client import new_client
from shared.registry_client import RegistryClient
from shared.settings import AUTH_APP, ServiceSettings

log = structlog.get_logger(__name__)

ALGORITHMS = ["RS256"]  # the only algorithm accepted: no "none", no HS256 with a public key
VERIFIED_CACHE_SIZE = 4096


@dataclass(frozen=True)
class Identity:
    subject: str
    roles: frozenset[str] = field(default_factory=frozenset)
    email: str = ""
    token: str = ""
    jti: str = ""  # the token's id, what a revocation names

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def is_service(self) -> bool:
        return "service" in self.roles

    @property
    def is_privileged(self) -> bool:
        """Admins and the fleet's own services may act on any customer's records."""
        return self.is_admin or self.is_service

    def may_access(self, owner_id: str) -> bool:
        return self.is_privileged or self.subject == owner_id

    def customer_scope(self, customer_id: str | None = None) -> str | None:
        """The customer whose records this caller sees: a customer their own whatever they ask for; admins and
        services the customer asked for (None: everyone's)."""
        return customer_id if self.is_privileged else self.subject


# jti → the revoked token's expiry (epoch seconds): after it the token is refused for being expired anyway.
RevokedSet = dict[str, float]


class Revocations:
    """The access tokens revoked before their expiry, held in memory: every verification asks it, none waits.

    `refresh()` replaces the set with what `fetch` returns (auth_service: its table; every other service:
    auth_service's GET /revocations at AUTH_URLS); `run()` refreshes every `poll_secs`. A revocation therefore
    reaches this process within one poll interval. If the set has not been refreshed for `max_staleness_secs`
    (auth_service unreachable), tokens are refused with 503 rather than checked against a list that may lack
    a logout: the delay stays bounded. The clock is injectable, so tests move time instead of sleeping.
    """

    def __init__(self, fetch: Callable[[], Awaitable[RevokedSet]], poll_secs: float, max_staleness_secs: float,
                 clock: Callable[[], float] = time.monotonic,
                 close: Callable[[], Awaitable[None]] | None = None) -> None:
        """`close`: what `run()` calls when it is stopped (the fetch's HTTP client)."""
        self._fetch = fetch
        self._close = close
        self.poll_secs = poll_secs
        self.max_staleness_secs = max_staleness_secs
        self._clock = clock
        self._revoked: RevokedSet = {}
        self._added: RevokedSet = {}  # added here while a refresh is under way
        self._refreshed_at: float | None = None  # None: never (a fresh boot's monotonic clock may be near 0)
        self._failing = False

    @property
    def loaded(self) -> bool:
        return self._refreshed_at is not None

    def add(self, jti: str, expires_at: float) -> None:
        """A revocation made here (after it was committed to the source): effective at once."""
        self._revoked[jti] = expires_at
        self._added[jti] = expires_at

    def is_revoked(self, jti: str) -> bool:
        """Whether jti is revoked; 503 when the set is too old to answer that (or was never loaded)."""
        if self._refreshed_at is None or self._clock() - self._refreshed_at > self.max_staleness_secs:
            raise ServiceUnavailable("The revocation list cannot be refreshed from auth_service.")
        return jti in self._revoked

    async def refresh(self) -> None:
        # What was added before this line was committed before the fetch begins, so the fetch has it; what is
        # added while it runs may be missing from its answer and is kept.
        self._added = {}
        revoked = {**await self._fetch(), **self._added}
        now = time.time()
        self._revoked = {jti: exp for jti, exp in revoked.items() if exp > now}
        self._refreshed_at = self._clock()

    async def run(self) -> None:
        """Refresh every poll interval until cancelled; a failed refresh keeps the set (until it is too old)."""
        try:
            while True:
                try:
                    await self.refresh()
                    if self._failing:
                        log.info("revocation list refreshed again")
                    self._failing = False
                except Exception as exc:  # any failure: keep polling, the staleness bound decides
                    if not self._failing:
                        log.warning("revocation list refresh failed", error=repr(exc))
                    self._failing = True
                await asyncio.sleep(self.poll_secs)
        finally:
            if self._close is not None:
                await self._close()


def remote_revocations(settings: ServiceSettings, registry: RegistryClient) -> Revocations:
    """The revocation list of auth_service at AUTH_URLS (GET /revocations), as every other service polls it.

    One client for every poll: its connection is kept alive between them (a client and a connection made anew
    every 2 s in every service cost ~0.3 ms per saga in the bench)."""
    client = new_client(timeout=5)

    async def fetch() -> RevokedSet:
        base = registry.choose(AUTH_APP).base_url
        response = await client.get(f"{base}/revocations")
        response.raise_for_status()
        return {str(item["jti"]): float(item["exp"]) for item in response.json()["revoked"]}

    return Revocations(fetch, settings.revocation_poll_secs, settings.revocation_max_staleness_secs,
                       close=client.aclose)


class TokenVerifier:
    def __init__(self, settings: ServiceSettings, registry: RegistryClient | None = None,
                 revocations: Revocations | None = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        # Epoch seconds that a token's exp is judged by (tests move it instead of waiting for a token to expire).
        self._clock = clock
        self.registry = registry
        # Checked on every verification, cached or not. With pinned keys (tests) an unloaded list is not asked.
        self.revocations = revocations
        self._keys: dict[str, dict[str, Any]] = {}
        # None until it happens: time.monotonic() counts from boot, so a 0.0 would read as "just now" there.
        self._fetched_at: float | None = None
        self._forced_at: float | None = None
        self._lock = asyncio.Lock()
        self._static_keys: dict[str, dict[str, Any]] | None = None
        # kid → (the JWK it was built from, the key object): python-jose rebuilds the RSA key from the
        # JWK on every decode otherwise, half of a verification's time (~90 -> ~40 µs measured).
        self._built: dict[str, tuple[dict[str, Any], Key]] = {}
        # token → (identity, its kid, its exp): a token already verified is not verified again until it
        # expires. The orchestrator sends one service token on every step of every saga; a verification
        # (parse, RSA signature, claims) was ~7 % of a step's CPU in the service. Bounded, oldest out first.
        self._verified: dict[str, tuple[Identity, str, float]] = {}

    def use_keys(self, jwks: dict[str, Any]) -> None:
        """Pin the key set (auth_service verifies with its own keys, tests with theirs)."""
        self._static_keys = {k["kid"]: k for k in jwks.get("keys", [])}

    def _jwks_url(self) -> str:
        """AUTH_JWKS_URL, or auth_service's /jwks at AUTH_URLS: fixed by configuration, never the registry's."""
        if self.settings.auth_jwks_url:
            return self.settings.auth_jwks_url
        if self.registry is None:
            raise ServiceUnavailable("No JWKS source is configured.")
        return f"{self.registry.choose(AUTH_APP).base_url}/jwks"

    async def _refresh(self, force: bool) -> None:
        async with self._lock:
            now = time.monotonic()
            if (self._keys and not force and self._fetched_at is not None
                    and now - self._fetched_at < self.settings.jwks_cache_secs):
                return
            # A forced refresh (unknown kid) is throttled on its own clock, so forged kids cannot flood
            # auth_service while a freshly rotated key is still picked up at once.
            if self._keys and force and self._forced_at is not None and now - self._forced_at < 5:
                return
            if force:
                self._forced_at = now
            try:
                async with new_client(timeout=5) as client:
                    response = await client.get(self._jwks_url())
                    response.raise_for_status()
                    keys = response.json().get("keys", [])
            except (httpx.HTTPError, ValueError) as exc:
                if self._keys:
                    log.warning("jwks refresh failed, keeping cached keys", error=repr(exc))
                    return
                raise ServiceUnavailable("The token keys cannot be fetched from auth_service.") from exc
            self._keys = {k["kid"]: k for k in keys if "kid" in k}
            self._fetched_at = time.monotonic()

    async def _key_for(self, kid: str) -> dict[str, Any]:
        if self._static_keys is not None:
            key = self._static_keys.get(kid)
            if key is None:
                raise Unauthorized("The token was signed with an unknown key.")
            return key
        await self._refresh(force=False)
        if kid not in self._keys:
            await self._refresh(force=True)
        if kid not in self._keys:
            raise Unauthorized("The token was signed with an unknown key.")
        return self._keys[kid]

    def _built_key(self, kid: str, key: dict[str, Any]) -> Key:
        built = self._built.get(kid)
        if built is None or built[0] is not key:  # a refreshed key set holds new dicts: build again
            try:
                built = self._built[kid] = (key, jwk.construct(key, ALGORITHMS[0]))
            except JOSEError as exc:
                raise Unauthorized("The token was signed with a key that cannot be used.") from exc
        return built[1]

    def _known_kid(self, kid: str) -> bool:
        return kid in (self._static_keys if self._static_keys is not None else self._keys)

    async def verify(self, token: str) -> Identity:
        cached = self._verified.get(token)
        if cached is not None:
            identity, kid, expires = cached
            # Still unexpired and its key still published (a key withdrawn from the JWKS ends its tokens).
            if self._clock() <= expires and self._known_kid(kid):
                self._refuse_if_revoked(identity)
                return identity
            del self._verified[token]
        identity, kid, expires = await self._verify(token)
        self._refuse_if_revoked(identity)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = (identity, kid, expires)
        return identity

    def _refuse_if_revoked(self, identity: Identity) -> None:
        revocations = self.revocations
        if revocations is None or (self._static_keys is not None and not revocations.loaded):
            return
        if revocations.is_revoked(identity.jti):
            raise Unauthorized("The token has been revoked.")

    async def _verify(self, token: str) -> tuple[Identity, str, float]:
        try:
            header = jwt.get_unverified_header(token)
        except JWTError as exc:
            raise Unauthorized("The token is malformed.") from exc
        if header.get("alg") not in ALGORITHMS:
            raise Unauthorized("The token's algorithm is not accepted.")
        kid = str(header.get("kid", ""))
        key = self._built_key(kid, await self._key_for(kid))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer,
                # exp is required here and judged below by this verifier's clock (as python-jose would: expired
                # once it is in the past).
                options={"require_exp": True, "require_sub": True, "verify_exp": False},
            )
        except JWTError as exc:
            raise Unauthorized(f"The token is not valid: {exc}.") from exc
        expires = claims["exp"]
        if isinstance(expires, bool) or not isinstance(expires, int | float):
            raise Unauthorized("The token's exp claim is not a number.")
        if expires < self._clock():
            raise Unauthorized("The token is not valid: Signature has expired.")
        if claims.get("typ") != "access":
            raise Unauthorized("Only access tokens are accepted.")
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise Unauthorized("The token's roles claim is malformed.")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise Unauthorized("The token has no id (jti), so it could not be revoked.")
        identity = Identity(subject=str(claims["sub"]), roles=frozenset(roles), email=str(claims.get("email", "")),
                            token=token, jti=jti)
        return identity, kid, float(claims["exp"])


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("A bearer token is required.")
    return token.strip()


async def require_identity(request: Request) -> Identity:
    """FastAPI dependency: the verified caller, or 401."""
    verifier: TokenVerifier = request.app.state.verifier
    identity = await verifier.verify(bearer_token(request))
    request.state.identity = identity
    return identity


Caller = Annotated[Identity, Depends(require_identity)]


async def require_admin(identity: Caller) -> Identity:
    if not identity.is_admin:
        raise Forbidden("This operation needs the admin role.")
    return identity


async def require_privileged(identity: Caller) -> Identity:
    """Admins or the fleet's own services (saga steps)."""
    if not identity.is_privileged:
        raise Forbidden("This operation is reserved to the fleet's services and admins.")
    return identity


# The kinds of caller a route can ask for, as FastAPI parameter types (Caller above: any verified caller).
Admin = Annotated[Identity, Depends(require_admin)]
Privileged = Annotated[Identity, Depends(require_privileged)]


class ServiceTokens:
    """Client-credentials tokens for service-to-service calls, renewed before they expire."""

    def __init__(self, settings: ServiceSettings, registry: RegistryClient) -> None:
        self.settings = settings
        self.registry = registry
        self._token = ""
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    def current(self) -> str | None:
        """The token while it is fresh, without awaiting anything (the hot path of every service call)."""
        return self._token if self._token and time.time() < self._expires_at - 30 else None

    async def token(self) -> str:
        if self._token and time.time() < self._expires_at - 30:
            return self._token
        async with self._lock:
            if self._token and time.time() < self._expires_at - 30:
                return self._token
            base = self.registry.choose(AUTH_APP).base_url
            async with new_client(timeout=10) as client:
                response = await client.post(
                    f"{base}/api/auth/token",
                    data={
                        "grant_type": "client_credentials",
                        "client_id": self.settings.service_client_id or self.settings.app_name.lower(),
                        "client_secret": self.settings.service_client_secret,
                    },
                )
            if response.status_code != 200:
                raise ServiceUnavailable(f"auth_service refused the service credentials ({response.status_code}).")
            try:
                body = response.json()
                token, expires_in = str(body["access_token"]), int(body.get("expires_in", 300))
            except (ValueError, KeyError, TypeError) as exc:
                raise ServiceUnavailable("auth_service sent no service token.") from exc
            self._token = token
            self._expires_at = time.time() + expires_in
            return self._token
