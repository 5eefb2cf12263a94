"""Request-rate limits for serving: a token bucket per API token (its ``rate_limit_rps``)
and per team (its ``rps`` quota). A request over either limit is refused with 429 and the
seconds until one more would pass (Retry-After)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class Buckets:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._state: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)
        self._lock = threading.Lock()

    def take(self, key: str, rate: float) -> float:
        """Take one request from ``key``'s bucket (``rate`` per second, bursts of up to
        ``max(1, rate)``); 0 when it passes, else the seconds to wait."""
        burst = max(1.0, rate)
        now = self.clock()
        with self._lock:
            tokens, last = self._state.get(key, (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._state[key] = (tokens - 1.0, now)
                return 0.0
            self._state[key] = (tokens, now)
            return (1.0 - tokens) / rate


class Limits:
    def __init__(self, team_rps: Callable[[str], float | None],
                 clock: Callable[[], float] = time.monotonic):
        self.team_rps = team_rps
        self.buckets = Buckets(clock)

    def check(self, token_id: int | None, token_rps: float | None, team: str | None
              ) -> tuple[float, str] | None:
        """None when the request may go; else (retry after seconds, which limit)."""
        if token_rps and token_id is not None:
            wait = self.buckets.take(f"token:{token_id}", token_rps)
            if wait:
                return (math.ceil(wait * 1000) / 1000,
                        f"this token's limit of {token_rps:g} requests/s")
        rps = self.team_rps(team) if team else None
        if rps is not None:
            if rps <= 0:
                return 60.0, f"team {team}'s serving quota (0 requests/s)"
            wait = self.buckets.take(f"team:{team}", rps)
            if wait:
                return math.ceil(wait * 1000) / 1000, f"team {team}'s quota of {rps:g} requests/s"
        return None


class TeamRates:
    """Each team's serving quota (requests per second) for :class:`Limits`, read through
    ``read`` (team name -> rps, None for no limit) at most every ``every_s`` seconds."""

    def __init__(self, read: Callable[[], dict[str, float | None]], every_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self.read, self.every_s, self.clock = read, every_s, clock
        self._rates: dict[str, float | None] = {}
        self._at = -math.inf

    def __call__(self, team: str) -> float | None:
        if self.clock() - self._at > self.every_s:
            self._rates = self.read()
            self._at = self.clock()
        return self._rates.get(team)
