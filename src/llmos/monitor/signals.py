"""Security signals for the alert rules: what the request gate saw, kept in memory,
bounded and windowed.

The gate (``api/gate.py``) reports every failed authentication with its address, every
authenticated request's token and address, and every artifact download; the composition
root hands it this recorder on ``app.state.signals``. Administrators' reads of team
objects reach it from ``security.rbac`` through the request's audit notes (security never
imports monitor). The alert rules (``monitor/alerts.py``) ask for counts in a window.

Nothing here is persisted: a restarted daemon starts with no history (a token's first
address after a restart is not "new"). Every structure is bounded (``MAX_KEYS`` keys,
``MAX_EVENTS`` timestamps per key), so a flood of addresses or tokens cannot grow the
daemon's memory. Tokens are named by their shown prefix, never the secret.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

MAX_KEYS = 10_000
MAX_EVENTS = 1_000
MAX_ADDRESSES = 64  # remembered per token
KEEP_S = 3600.0  # nothing older is ever asked for


class _Windows:
    """Timestamps per key (oldest keys dropped first), counted over a window."""

    def __init__(self):
        self._by_key: OrderedDict[str, deque] = OrderedDict()

    def add(self, key: str, at: float, value=None) -> None:
        times = self._by_key.pop(key, None) or deque(maxlen=MAX_EVENTS)
        times.append((at, value))
        self._by_key[key] = times
        while len(self._by_key) > MAX_KEYS:
            self._by_key.popitem(last=False)

    def counts(self, since: float) -> dict[str, list]:
        """Per key, the values recorded since ``since`` (old ones forgotten)."""
        out = {}
        for key in list(self._by_key):
            times = self._by_key[key]
            while times and times[0][0] < since - KEEP_S:
                times.popleft()
            recent = [v for at, v in times if at >= since]
            if recent:
                out[key] = recent
            elif not times:
                del self._by_key[key]
        return out


class Signals:
    """The recorder the gate feeds and the security rules read."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self._lock = threading.Lock()
        self._failures = _Windows()  # address -> failed authentications
        self._downloads = _Windows()  # token -> artifact downloads
        self._admin_reads = _Windows()  # admin token -> team read
        self._new_addresses = _Windows()  # "token@address" -> first use from it
        self._addresses: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()

    # -- fed by the gate -------------------------------------------------------------------

    def auth_failed(self, address: str) -> None:
        with self._lock:
            self._failures.add(address, self.clock())

    def token_used(self, token: str, address: str) -> None:
        """An authenticated request: a token's address that differs from every address it
        was used from before is a new-address signal (its first address is not)."""
        with self._lock:
            known = self._addresses.pop(token, None)
            if known is None:
                known = OrderedDict()
            elif address not in known:
                self._new_addresses.add(f"{token}@{address}", self.clock(),
                                        (token, address, list(known)[-3:]))
            known.pop(address, None)
            known[address] = None
            while len(known) > MAX_ADDRESSES:
                known.popitem(last=False)
            self._addresses[token] = known
            while len(self._addresses) > MAX_KEYS:
                self._addresses.popitem(last=False)

    def downloaded(self, token: str) -> None:
        with self._lock:
            self._downloads.add(token, self.clock())

    def admin_read(self, token: str, teams) -> None:
        """An administrator token read objects of ``teams`` (teams it is no member of)."""
        with self._lock:
            now = self.clock()
            for team in teams:
                self._admin_reads.add(token, now, team)

    # -- read by the rules -----------------------------------------------------------------

    def failures_by_address(self, window_s: float) -> dict[str, int]:
        with self._lock:
            return {k: len(v) for k, v in self._failures.counts(self.clock() - window_s).items()}

    def downloads_by_token(self, window_s: float) -> dict[str, int]:
        with self._lock:
            return {k: len(v) for k, v in
                    self._downloads.counts(self.clock() - window_s).items()}

    def admin_teams_by_token(self, window_s: float) -> dict[str, set[str]]:
        with self._lock:
            return {k: set(v) for k, v in
                    self._admin_reads.counts(self.clock() - window_s).items()}

    def new_addresses(self, window_s: float) -> dict[str, tuple]:
        """``token@address`` -> (token, address, addresses it was used from before), for
        first uses from a new address within the window."""
        with self._lock:
            return {k: v[-1] for k, v in
                    self._new_addresses.counts(self.clock() - window_s).items()}
