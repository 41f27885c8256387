"""The simulated card processor: each test token's outcome, without a database."""

from __future__ import annotations

import pytest

from payment_service import processor


@pytest.mark.parametrize("token,brand", [("tok_visa", "visa"), ("tok_mastercard", "mastercard")])
def test_good_cards_capture(token: str, brand: str) -> None:
    result = processor.charge(token, 1000, "EUR", attempt=1)
    assert isinstance(result, processor.Captured) and result.brand == brand
    assert result.reference.startswith("ch_")


@pytest.mark.parametrize("token,code", [
    ("tok_chargeDeclined", "card_declined"),
    ("tok_chargeDeclinedInsufficientFunds", "insufficient_funds"),
    ("tok_unknown", "invalid_token"),
])
def test_declines_are_final(token: str, code: str) -> None:
    for attempt in (1, 2, 5):
        result = processor.charge(token, 1000, "EUR", attempt)
        assert isinstance(result, processor.Declined) and result.code == code


def test_processing_error_is_transient_every_time() -> None:
    for attempt in range(1, 6):
        result = processor.charge("tok_processingError", 1000, "EUR", attempt)
        assert isinstance(result, processor.Unavailable) and result.code == "processing_error"


def test_flaky_fails_twice_then_captures() -> None:
    outcomes = [type(processor.charge("tok_flaky", 1000, "EUR", attempt)) for attempt in (1, 2, 3, 4)]
    assert outcomes == [processor.Unavailable, processor.Unavailable, processor.Captured, processor.Captured]


@pytest.mark.parametrize("token", sorted(processor.TEST_TOKENS | {"tok_unknown"}))
def test_only_tokens_that_count_attempts_depend_on_the_attempt(token: str) -> None:
    # make_payment skips counting earlier attempts for the other tokens: their outcome must not depend on it.
    if processor.counts_attempts(token):
        return
    outcomes = {(type(result), getattr(result, "code", None), getattr(result, "brand", None))
                for result in (processor.charge(token, 1000, "EUR", attempt) for attempt in (1, 2, 3, 10))}
    assert len(outcomes) == 1
