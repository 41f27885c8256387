"""The gateway's rate limits: per client address (before /validate) and per user (after it)."""

from __future__ import annotations

from shared.ratelimit import TokenBucketLimiter, Verdict, tighter

__all__ = ["RateLimits", "TokenBucketLimiter", "Verdict", "tighter"]


class RateLimits:
    """The gateway's two limits: per client address (checked first, before /validate) and per user."""

    def __init__(self, address: TokenBucketLimiter, user: TokenBucketLimiter) -> None:
        self.address = address
        self.user = user

    @classmethod
    def from_settings(cls, rate_address: float, burst_address: int, rate_user: float, burst_user: int) -> RateLimits:
        return cls(TokenBucketLimiter(rate_address, burst_address), TokenBucketLimiter(rate_user, burst_user))
