"""The reliability fixtures on a machine booted seconds ago (time.monotonic() near 0) and on one up for weeks.

The clock is injected: the first use of a token must log in whatever the clock reads, and a token is renewed
only once it is older than the renewal interval. No fleet: `login` is replaced by a recorder.
"""

from __future__ import annotations

import httpx
import pytest

from tests.clock import Clock
from tests.reliability import conftest as fixtures
from tests.reliability.conftest import Admin, Renewal, Shoppers


@pytest.fixture
def logins(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []

    def login(_client: httpx.Client, email: str, _password: str) -> str:
        seen.append(email)
        return f"token-{len(seen)}"

    monkeypatch.setattr(fixtures, "login", login)
    return seen


@pytest.mark.parametrize("uptime", [0.0, 3.0, 599.0, 1_900_000.0], ids=["at-boot", "3s", "10min", "3weeks"])
def test_the_admin_logs_in_at_first_use_whatever_the_uptime(logins: list[str], uptime: float) -> None:
    clock = Clock(uptime)
    admin = Admin("http://127.0.0.1:9", Renewal(clock))
    assert admin.token == "token-1" and admin.headers == {"Authorization": "Bearer token-1"}
    clock.now += 600
    assert admin.token == "token-1" and len(logins) == 1  # not older than the interval yet
    clock.now += 1
    assert admin.token == "token-2" and logins == [fixtures.ADMIN_EMAIL] * 2


@pytest.mark.parametrize("uptime", [2.0, 1_900_000.0], ids=["2s", "3weeks"])
def test_shoppers_renew_their_tokens_after_the_interval_only(logins: list[str], uptime: float) -> None:
    clock = Clock(uptime)
    users = [fixtures.User(f"s{i}@example.com", "pw", f"registered-{i}", str(i)) for i in range(2)]
    shoppers = Shoppers("http://127.0.0.1:9", users, Renewal(clock))
    shoppers.renewal.done()  # as the fixture does: registering logged them in
    assert shoppers.tokens == ["registered-0", "registered-1"] and not logins
    clock.now += 601
    assert shoppers.tokens == ["token-1", "token-2"]


def test_a_failed_login_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[int] = []

    def login(_client: httpx.Client, _email: str, _password: str) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise AssertionError("the gateway is not up yet")
        return "token"

    monkeypatch.setattr(fixtures, "login", login)
    admin = Admin("http://127.0.0.1:9", Renewal(Clock(1.0)))
    with pytest.raises(AssertionError):
        _ = admin.token
    assert admin.token == "token" and len(attempts) == 2
