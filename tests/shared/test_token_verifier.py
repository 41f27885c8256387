"""shared.auth.TokenVerifier: what every service accepts and refuses."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt

from shared.auth import TokenVerifier
from shared.errors import Unauthorized
from shared.settings import ServiceSettings
from tests.inprocess import JWKS, KID, PRIVATE_PEM, PUBLIC_PEM, mint


@pytest.fixture
def verifier() -> TokenVerifier:
    verifier = TokenVerifier(ServiceSettings(eureka_server_url=""))
    verifier.use_keys(JWKS)
    return verifier


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(**overrides: object) -> dict:
    now = int(time.time())
    return {"sub": "u1", "roles": ["customer"], "typ": "access", "iss": "customer-service-auth",
            "aud": "customer-service", "iat": now, "exp": now + 600, **overrides}


async def test_valid_token(verifier: TokenVerifier) -> None:
    identity = await verifier.verify(mint("u1", ("customer",)))
    assert identity.subject == "u1" and identity.roles == {"customer"} and not identity.is_privileged


def _other_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _hs256_signed_with_public_key() -> str:
    """Algorithm confusion, built by hand: python-jose itself refuses to sign HS256 with an RSA key."""
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT', 'kid': KID})}.{_b64(_claims(roles=['admin']))}"
    signature = hmac.new(PUBLIC_PEM.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


ATTACKS = {
    "forged signature": lambda: jwt.encode(_claims(), _other_key_pem(), algorithm="RS256", headers={"kid": KID}),
    "alg none": lambda: f"{_b64({'alg': 'none', 'kid': KID})}.{_b64(_claims(roles=['admin']))}.",
    "hs256 with public key": lambda: _hs256_signed_with_public_key(),
    "expired": lambda: mint("u1", exp=int(time.time()) - 5),
    "wrong issuer": lambda: mint("u1", iss="someone-else"),
    "wrong audience": lambda: mint("u1", aud="another-api"),
    "refresh token type": lambda: mint("u1", typ="refresh"),
    "unknown kid": lambda: jwt.encode(_claims(), _other_key_pem(), algorithm="RS256", headers={"kid": "nope"}),
    "roles not a list": lambda: jwt.encode(_claims(roles="admin"), PRIVATE_PEM, algorithm="RS256",
                                           headers={"kid": KID}),
    "garbage": lambda: "not.a.jwt",
}


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_attacks_are_refused(verifier: TokenVerifier, attack: str) -> None:
    with pytest.raises(Unauthorized):
        await verifier.verify(ATTACKS[attack]())


async def test_a_verified_token_is_remembered_until_it_expires() -> None:
    now = [time.time()]
    verifier = TokenVerifier(ServiceSettings(eureka_server_url=""), clock=lambda: now[0])
    verifier.use_keys(JWKS)
    token = mint("u1", ("customer",), exp=int(now[0]) + 60)
    assert (await verifier.verify(token)).subject == "u1"
    assert (await verifier.verify(token)).subject == "u1"  # from the cache
    now[0] += 61  # its exp is past: neither the cache nor a fresh verification accepts it
    with pytest.raises(Unauthorized):
        await verifier.verify(token)
    verifier._verified.clear()
    with pytest.raises(Unauthorized, match="expired"):
        await verifier.verify(token)


async def test_a_remembered_token_ends_with_its_key(verifier: TokenVerifier) -> None:
    token = mint("u1", ("customer",))
    await verifier.verify(token)
    verifier.use_keys({"keys": []})  # the key withdrawn from the key set
    with pytest.raises(Unauthorized):
        await verifier.verify(token)
