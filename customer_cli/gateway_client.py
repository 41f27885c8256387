"""The CLI's HTTP calls through the gateway (httpx): login, catalogue, customer orders and their sagas."""

from __future__ import annotations

import uuid
from datetime import datetime
from types import TracebackType
from typing import Any

import httpx

SAGAS = "/api/customer-orders"


class GatewayError(Exception):
    """An answer the CLI cannot go on with: the problem+json detail when there is one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def raise_for_problem(response: httpx.Response, what: str) -> None:
    if response.is_success:
        return
    detail = response.text[:300]
    try:
        body = response.json()
        if isinstance(body, dict):
            detail = str(body.get("detail") or body.get("title") or detail)
    except ValueError:
        pass
    raise GatewayError(f"{what}: {response.status_code} {detail}", response.status_code)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def order_headers(token: str, idempotency_key: str | None = None, wait_secs: int = 0) -> dict[str, str]:
    headers = {**bearer(token), "Idempotency-Key": idempotency_key or str(uuid.uuid4())}
    if wait_secs:
        headers["Prefer"] = f"wait={wait_secs}"
    return headers


class GatewayClient:
    """One user's synchronous session with the gateway; `token` is set by `login` (or given)."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.http.close()

    def _get(self, path: str, what: str, **params: Any) -> Any:
        try:
            response = self.http.get(path, params={k: v for k, v in params.items() if v is not None},
                                     headers=bearer(self.token) if self.token else None)
        except httpx.HTTPError as exc:
            raise GatewayError(f"{what}: cannot reach the gateway at {self.base_url} ({exc})") from exc
        raise_for_problem(response, what)
        return response.json()

    def _post(self, path: str, what: str, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
        try:
            response = self.http.post(path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise GatewayError(f"{what}: cannot reach the gateway at {self.base_url} ({exc})") from exc
        raise_for_problem(response, what)
        return response

    def register(self, email: str, password: str) -> None:
        self._post("/api/auth/register", "Registering", {"email": email, "password": password})

    def login(self, email: str, password: str) -> str:
        response = self._post("/api/auth/login", f"Logging in as {email}", {"email": email, "password": password})
        self.token = str(response.json()["access_token"])
        return self.token

    def me(self) -> dict[str, Any]:
        me: dict[str, Any] = self._get("/api/auth/me", "Reading the logged-in user")
        return me

    def products(self) -> list[dict[str, Any]]:
        page = self._get("/api/inventory/products", "Reading the catalogue", limit=500)
        return list(page["items"])

    def place_order(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        """Start the saga; answers {saga_id, status, status_url} (202) at once."""
        assert self.token, "log in first"
        response = self._post(SAGAS, "Placing the order", body, order_headers(self.token, idempotency_key))
        accepted: dict[str, Any] = response.json()
        return accepted

    def saga(self, saga_id: str) -> dict[str, Any]:
        saga: dict[str, Any] = self._get(f"{SAGAS}/{saga_id}", f"Reading saga {saga_id}")
        return saga

    def sagas(self, status: str | None = None, limit: int = 50, offset: int = 0,
              created_after: datetime | None = None) -> dict[str, Any]:
        """A page of sagas, newest first; `total` counts every one that matches (status, created since)."""
        # An ISO string: httpx would send str(datetime), with a space for the "T" (and encodes a "+" offset).
        since = created_after.isoformat() if created_after is not None else None
        page: dict[str, Any] = self._get(SAGAS, "Listing sagas", status=status, limit=limit, offset=offset,
                                         created_after=since)
        return page
