"""Token-bucket rate limits and their IETF RateLimit-* headers (the gateway's per address and user, auth_service's
per address on password hashing).

Hand-written rather than `limits`: that library offers fixed, moving and sliding windows but no token
bucket, which is what Spring Cloud Gateway's RequestRateLimiter and nginx's `limit_req ... burst` give
(a sustained rate plus a burst). A bucket is two floats; checking it is synchronous, so the hot path
awaits nothing. State is per process, like `limits`' in-memory storage would be.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple


class Verdict(NamedTuple):
    """One bucket's answer, and what to tell the client (draft-ietf-httpapi-ratelimit-headers).

    A NamedTuple: one or two are made per request, and a frozen dataclass costs several times more.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_secs: int
    retry_after_secs: int
    window_secs: int

    def headers(self) -> list[tuple[str, str]]:
        found = [
            ("RateLimit-Limit", str(self.limit)),
            ("RateLimit-Remaining", str(self.remaining)),
            ("RateLimit-Reset", str(self.reset_secs)),
            ("RateLimit-Policy", f"{self.limit};w={self.window_secs}"),
        ]
        if not self.allowed:
            found.append(("Retry-After", str(self.retry_after_secs)))
        return found

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The same headers as ASGI raw headers (lower-case names), to append to a response."""
        return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in self.headers()]


def tighter(a: Verdict | None, b: Verdict | None) -> Verdict | None:
    """The verdict to report when two limits apply: a refusal, else the one with less left."""
    if a is None or b is None:
        return a or b
    if a.allowed != b.allowed:
        return b if a.allowed else a
    return a if a.remaining / a.limit <= b.remaining / b.limit else b


class TokenBucketLimiter:
    """`rate` tokens per second up to `burst`; a request takes one. Idle keys are forgotten (least recent first)."""

    def __init__(
        self, rate: float, burst: int, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        # key → (tokens, when counted); insertion order is recency, so the first entry is the oldest.
        self._buckets: dict[str, tuple[float, float]] = {}
        self._window_secs = max(1, math.ceil(burst / rate)) if rate > 0 else 1

    @property
    def enabled(self) -> bool:
        return self.rate > 0 and self.burst > 0

    def hit(self, key: str) -> Verdict:
        """Take a token for `key` if there is one; a refused request takes none."""
        now = self._clock()
        found = self._buckets.pop(key, None)
        tokens = float(self.burst) if found is None else min(self.burst, found[0] + (now - found[1]) * self.rate)
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            # A forgotten key starts again with a full bucket: generous, never wrong in the client's disfavour.
            del self._buckets[next(iter(self._buckets))]
        return Verdict(
            allowed=allowed,
            limit=self.burst,
            remaining=int(tokens),
            reset_secs=math.ceil((self.burst - tokens) / self.rate),
            retry_after_secs=0 if allowed else max(1, math.ceil((1 - tokens) / self.rate)),
            window_secs=self._window_secs,
        )

    def __len__(self) -> int:
        return len(self._buckets)

