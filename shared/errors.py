"""Domain errors and the handlers that turn every error into an RFC 9457 problem+json body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Self

import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

# What a refusal keeps (DomainError.keeping): work on the route's transaction, a shared.db.Tx (not imported here:
# the errors sit below the data path, which raises them).
KeptWork = Callable[[Any], Awaitable[None]]

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_BASE = "https://customer-service.example/problems/"
log = structlog.get_logger(__name__)


class DomainError(Exception):
    """A refusal by the domain; the service layer raises these and knows nothing of HTTP."""

    status = 400
    title = "Bad request"
    type_slug = "bad-request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        self.kept: KeptWork | None = None

    def keeping(self, work: KeptWork) -> Self:
        """This refusal, with work to commit although it rolls back the request's transaction (a declined
        charge attempt is kept on file); the route's unit of work (shared/idempotency.py) runs it afterwards."""
        self.kept = work
        return self

    @classmethod
    def type_url(cls) -> str:
        """The problem's `type` (RFC 9457): what a client tells one problem from another by."""
        return f"{PROBLEM_TYPE_BASE}{cls.type_slug}"


class NotFound(DomainError):
    status, title, type_slug = 404, "Not found", "not-found"


class Conflict(DomainError):
    status, title, type_slug = 409, "Conflict", "conflict"


class RequestInProgress(Conflict):
    """The request with this Idempotency-Key is still being processed: try again shortly (it is not a refusal)."""

    title, type_slug = "Request in progress", "request-in-progress"


class InvalidRequest(DomainError):
    status, title, type_slug = 422, "Unprocessable request", "validation-error"


class PaymentRequired(DomainError):
    status, title, type_slug = 402, "Payment declined", "payment-declined"


class Unauthorized(DomainError):
    status, title, type_slug = 401, "Unauthorized", "unauthorized"


class Forbidden(DomainError):
    status, title, type_slug = 403, "Forbidden", "forbidden"


class TooManyRequests(DomainError):
    status, title, type_slug = 429, "Too many requests", "rate-limited"


class ServiceUnavailable(DomainError):
    status, title, type_slug = 503, "Service unavailable", "unavailable"


class PayloadTooLarge(DomainError):
    status, title, type_slug = 413, "Payload too large", "payload-too-large"

    @classmethod
    def over(cls, max_bytes: int) -> PayloadTooLarge:
        """The refusal of a body over `max_bytes`, as every server and the gateway answer it."""
        return cls(f"The request body is larger than {max_bytes} bytes.", max_bytes=max_bytes)


class BodyTimeout(DomainError):
    status, title, type_slug = 408, "Request timeout", "body-timeout"

    @classmethod
    def after(cls, read_timeout_secs: float) -> BodyTimeout:
        """The refusal of a body whose next piece did not come within `read_timeout_secs`."""
        return cls(f"The request body stalled for {read_timeout_secs:g} s.", read_timeout_secs=read_timeout_secs)


def problem(
    status: int,
    title: str,
    detail: str = "",
    type_slug: str = "",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"{PROBLEM_TYPE_BASE}{type_slug or status}",
        "title": title,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    body.update(jsonable_encoder(extra))
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def domain_problem(exc: DomainError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    retry_after = exc.extra.get("retry_after")
    if retry_after is not None:
        headers = {**(headers or {}), "Retry-After": str(retry_after)}
    return problem(exc.status, exc.title, exc.detail, exc.type_slug, headers=headers, **exc.extra)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves the service as problem+json; an unexpected one is logged and answered 500."""

    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        return domain_problem(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
            for err in exc.errors()
        ]
        return problem(422, "Unprocessable request", "The request is not valid.", "validation-error",
                       errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed", 413: "Payload too large"}
        return problem(exc.status_code, titles.get(exc.status_code, str(exc.detail)), str(exc.detail),
                       headers=getattr(exc, "headers", None))

    @app.exception_handler(DataError)
    async def _data(_: Request, exc: DataError) -> JSONResponse:
        # Input the schema let through but the database refused (e.g. a value out of its range).
        log.warning("database refused a value", error=str(exc.orig))
        return problem(422, "Unprocessable request", "A value is out of the range the service can store.",
                       "validation-error")

    @app.exception_handler(DBAPIError)
    async def _database(_: Request, exc: DBAPIError) -> JSONResponse:
        sqlstate = str(getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None) or "")
        if sqlstate.startswith("22"):
            # SQLSTATE class 22, data exception (e.g. a NUL character in text): the input's fault, not ours.
            log.warning("database refused a value", sqlstate=sqlstate, error=repr(exc.orig))
            return problem(422, "Unprocessable request", "A value cannot be stored (e.g. it contains a NUL "
                           "character or is out of range).", "validation-error")
        # Connection refused, dropped or exhausted: transient, the caller may retry.
        log.warning("database unavailable", error=repr(exc.orig))
        return problem(503, "Service unavailable", "The service's database is unavailable; retry later.",
                       "unavailable", headers={"Retry-After": "1"})

    @app.exception_handler(PoolTimeout)
    async def _pool_exhausted(_: Request, exc: PoolTimeout) -> JSONResponse:
        log.warning("no database connection free", error=str(exc))
        return problem(503, "Service unavailable", "The service is busy; retry later.", "unavailable",
                       headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", error=repr(exc))
        return problem(500, "Internal server error", "An unexpected error occurred.", "internal")
