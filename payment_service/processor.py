"""The simulated card processor: the payment token alone decides the outcome (like Stripe's test tokens).

Pure: no I/O, no database. The caller tells it which attempt this is, so tok_flaky can fail twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

FLAKY_FAILURES = 2  # tok_flaky answers "unavailable" this many times per order, then captures


@dataclass(frozen=True)
class Captured:
    reference: str
    brand: str


@dataclass(frozen=True)
class Declined:
    """A final refusal (HTTP 402): retrying the same card will not help."""

    code: str
    message: str


@dataclass(frozen=True)
class Unavailable:
    """A transient failure (HTTP 503): the same request may succeed later."""

    code: str
    message: str


ChargeResult = Captured | Declined | Unavailable

_BRANDS = {"tok_visa": "visa", "tok_mastercard": "mastercard", "tok_flaky": "visa"}
_DECLINES = {
    "tok_chargeDeclined": Declined("card_declined", "The card was declined."),
    "tok_chargeDeclinedInsufficientFunds": Declined("insufficient_funds", "The card has insufficient funds."),
}
TEST_TOKENS = frozenset({*_BRANDS, *_DECLINES, "tok_processingError"})


def counts_attempts(token: str) -> bool:
    """Whether the outcome for `token` depends on `attempt`: for the other tokens the caller need not count."""
    return token == "tok_flaky"


def charge(token: str, amount_minor: int, currency: str, attempt: int) -> ChargeResult:
    """Charge `amount_minor` of `currency` to the card behind `token`; `attempt` counts from 1 per order."""
    if token in _DECLINES:
        return _DECLINES[token]
    if token == "tok_processingError":
        return Unavailable("processing_error", "The card processor failed to process the charge; retry later.")
    if token == "tok_flaky" and attempt <= FLAKY_FAILURES:
        return Unavailable("processing_error", f"The card processor is unavailable (attempt {attempt}); retry later.")
    if token in _BRANDS:
        return Captured(reference=f"ch_{uuid.uuid4().hex[:24]}", brand=_BRANDS[token])
    # An unknown token is the customer's problem, not a transient one: refuse it for good.
    return Declined("invalid_token", "The payment token is not valid.")
