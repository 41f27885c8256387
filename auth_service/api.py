"""auth_service routes: parse, call the service layer, shape the response."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response

from auth_service.schemas import (
    ClientCredentialsIn,
    IdentityOut,
    JwksOut,
    LoginIn,
    LogoutIn,
    RefreshIn,
    RegisterIn,
    RevocationsOut,
    RevokedTokenOut,
    ServiceTokenOut,
    SigningKeyOut,
    TokenPairOut,
    UserOut,
)
from auth_service.service import AuthService, TokenPair, VerifiedToken
from shared.auth import bearer_token
from shared.errors import Forbidden, InvalidRequest
from shared.forwarded import TrustedProxies
from shared.schemas import model_response

router = APIRouter(prefix="/api/auth", tags=["auth"])
# Paths outside /api/auth: the JWKS other services fetch and the gateway's forward-auth call.
public_router = APIRouter(tags=["auth"])

# Token responses must not be cached by anything in between (RFC 6749 §5.1).
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


# async: FastAPI runs a plain `def` dependency on a worker thread, a thread hop on every request.
async def get_auth(request: Request) -> AuthService:
    auth: AuthService = request.app.state.auth
    return auth


Auth = Annotated[AuthService, Depends(get_auth)]


async def verified_caller(request: Request, auth: Auth) -> VerifiedToken:
    """The caller's access token, verified and not revoked."""
    return await auth.validate(bearer_token(request))


Caller = Annotated[VerifiedToken, Depends(verified_caller)]


async def admin_caller(caller: Caller) -> VerifiedToken:
    if not caller.identity.is_admin:
        raise Forbidden("This operation needs the admin role.")
    return caller


Admin = Annotated[VerifiedToken, Depends(admin_caller)]


GATEWAY_AUTHORIZATION = "x-gateway-authorization"


async def _client_address(request: Request, auth: AuthService) -> str:
    """The address failed logins are counted against: the peer, or the client the authenticated gateway names.

    X-Forwarded-For is believed only on a request that carries the gateway's own service token in
    X-Gateway-Authorization (not for coming from some address: any local process shares the gateway's). The
    gateway appended the client it saw as the last entry; TRUSTED_PROXIES here are the load balancers in front
    of the gateway, past which the chain is walked further left (shared/forwarded.py).
    """
    # request.client is the socket peer (uvicorn runs with proxy_headers=False, shared/server.py).
    peer = request.client.host if request.client else "unknown"
    if not await auth.is_gateway(request.headers.get(GATEWAY_AUTHORIZATION, "")):
        return peer
    entries = [entry.strip() for entry in ",".join(request.headers.getlist("x-forwarded-for")).split(",")]
    entries = [entry for entry in entries if entry]
    if not entries:
        return peer
    trusted: TrustedProxies = request.app.state.trusted_proxies
    return trusted.resolve(entries[-1], entries[:-1]).client or peer


def _pair_response(pair: TokenPair) -> Response:
    body = TokenPairOut(access_token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in)
    return model_response(body, headers=NO_STORE)


@router.post("/register", status_code=201, response_model=UserOut)
async def register(body: RegisterIn, request: Request, auth: Auth) -> UserOut:
    user = await auth.register(body.email, body.password, body.full_name, await _client_address(request, auth))
    return UserOut.model_validate(user)


@router.post("/login", response_model=TokenPairOut)
async def login(body: LoginIn, request: Request, auth: Auth) -> Response:
    return _pair_response(await auth.login(body.email, body.password, await _client_address(request, auth)))


@router.post("/refresh", response_model=TokenPairOut)
async def refresh(body: RefreshIn, auth: Auth) -> Response:
    return _pair_response(await auth.refresh(body.refresh_token))


@router.post("/logout", status_code=204)
async def logout(caller: Caller, auth: Auth, body: LogoutIn | None = None) -> Response:
    await auth.logout(caller, body.refresh_token if body else None)
    return Response(status_code=204)


@router.get("/me", response_model=UserOut)
async def me(caller: Caller, auth: Auth) -> UserOut:
    return UserOut.model_validate(await auth.get_user(caller.identity.subject))


_FORM_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/x-www-form-urlencoded": {"schema": {
            "type": "object",
            "required": ["grant_type", "client_id", "client_secret"],
            "properties": {
                "grant_type": {"type": "string", "enum": ["client_credentials"]},
                "client_id": {"type": "string"},
                "client_secret": {"type": "string", "format": "password"},
            },
        }}},
    }
}


@router.post("/token", response_model=ServiceTokenOut, openapi_extra=_FORM_BODY)
async def service_token(request: Request, auth: Auth) -> Response:
    """Client credentials grant for the fleet's services (form-encoded, as OAuth 2.0 specifies)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise InvalidRequest("The body must be application/x-www-form-urlencoded.")
    try:
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        credentials = ClientCredentialsIn.model_validate(form)
    except UnicodeDecodeError as exc:
        raise InvalidRequest("The body is not valid UTF-8.") from exc
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_input=False)) from exc
    token, expires_in = await auth.issue_service_token(credentials.client_id, credentials.client_secret,
                                                       await _client_address(request, auth))
    return model_response(ServiceTokenOut(access_token=token, expires_in=expires_in), headers=NO_STORE)


@router.post("/keys/rotate", status_code=201, response_model=SigningKeyOut)
async def rotate_keys(_: Admin, auth: Auth) -> SigningKeyOut:
    """A new key signs from now on; the old ones stay in the JWKS until the tokens they signed expire."""
    key = await auth.rotate_keys()
    return SigningKeyOut(kid=key.kid, created_at=key.created_at, retired_at=None, signing=True)


@router.get("/keys", response_model=list[SigningKeyOut])
async def list_keys(_: Admin, auth: Auth) -> list[SigningKeyOut]:
    keys = await auth.signing_keys()
    signing = next((key.kid for key in keys if key.retired_at is None), None)
    return [SigningKeyOut(kid=k.kid, created_at=k.created_at,
                          retired_at=k.retired_at, signing=k.kid == signing)
            for k in keys]


async def _jwks(auth: AuthService) -> JSONResponse:
    await auth.keyring.reload_if_stale()
    return JSONResponse(auth.keyring.jwks, headers={"Cache-Control": "public, max-age=60"})


@router.get("/.well-known/jwks.json", response_model=JwksOut)
async def jwks_well_known(auth: Auth) -> JSONResponse:
    return await _jwks(auth)


@public_router.get("/jwks", response_model=JwksOut)
async def jwks(auth: Auth) -> JSONResponse:
    return await _jwks(auth)


@public_router.get("/revocations", response_model=RevocationsOut)
async def revocations(auth: Auth) -> Response:
    """The revoked, unexpired access tokens, fresh from the table: what every service polls (never routed)."""
    revoked = await auth.revoked_tokens()
    body = RevocationsOut(revoked=[RevokedTokenOut(jti=jti, exp=int(exp)) for jti, exp in revoked.items()])
    return model_response(body, headers={"Cache-Control": "no-store"})


@public_router.get("/validate", response_model=IdentityOut, operation_id="validate_get")
@public_router.post("/validate", response_model=IdentityOut, operation_id="validate_post")
async def validate(caller: Caller) -> Response:
    """Forward-auth: 200 with the identity (body and X-User-* headers) for a good token, 401 otherwise."""
    identity = caller.identity
    roles = sorted(identity.roles)
    body = IdentityOut(user_id=identity.subject, roles=roles, email=identity.email)
    headers = {"X-User-Id": identity.subject, "X-User-Roles": ",".join(roles), "X-User-Email": identity.email,
               "Cache-Control": "no-store"}
    return model_response(body, headers=headers)
