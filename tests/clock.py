"""Clocks a test moves by hand, for code that takes a clock: time passes when the test says so, never by sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class Clock:
    """A monotonic clock (seconds as a float), as `time.monotonic` is."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class WallClock:
    """A timezone-aware UTC clock, as `shared.db.utc_now` is; it starts at the real time."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
