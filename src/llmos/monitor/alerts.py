"""Alerts: the rules in force, their evaluation by a daemon-side thread, and what a rule
does when it starts or stops firing.

Rules come from YAML (``monitor/alert_rules.py``): the file ``LLMOS_ALERTS_FILE`` (or
``LLMOS_HOME/alerts.yaml`` when present) when the daemon starts — a malformed file
refuses the start —, and ``PUT /v1/alerts/rules`` later (written back to that file). A
malformed set is refused whole, naming the rule and the field; the rules in force stay.

Every ``alert_interval_s`` the engine's thread asks each rule's check
(``monitor/alert_checks.py``) which subjects break it. A subject that breaks it for
``for_s`` fires; one that no longer does resolves. Both become ``alert`` events (team:
the subject's team when it has one — a job, a team's failure rate, a deployment —, else
None: administrators only) and, when the rule names a webhook, a POST from a separate
thread (:class:`Notifier`: a bounded queue and a worker per URL, a total deadline per
attempt, retried with exponential back-off, failures logged), so a slow or dead webhook
never holds up the evaluation, the daemon or another rule's webhook. A check that raises
is logged once (per rule, until it works again); the other rules are evaluated as ever.
Administrators see the rules' parameters; other readers their names, kinds and
severities, and the alerts of their teams (``api/events.py``).
``llmos_alerts_firing{rule,severity}`` counts what fires (a collector on the daemon's
metrics; no team label, so administrators only).

What fires is kept in memory: after a restart, a condition that still holds fires anew.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from prometheus_client.core import GaugeMetricFamily

from llmos.monitor import alert_checks as checks
from llmos.monitor.alert_rules import (
    AlertRulesError,
    describe,
    load_rules_file,
    parse_rules,
    rules_path,
)
from llmos.store.models import utcnow

log = logging.getLogger("llmos.monitor")
PRUNE_EVERY_S = 3600.0


@dataclass
class Firing:
    rule: str
    key: str
    since: float
    value: float
    message: str
    team: str | None
    severity: str

    def as_dict(self) -> dict:
        return {"rule": self.rule, "key": self.key, "severity": self.severity,
                "since": datetime.fromtimestamp(self.since, UTC).isoformat(),
                "value": self.value, "message": self.message, "team": self.team}


class AlertEngine:
    """The rules in force, what fires, and the thread that evaluates them."""

    def __init__(self, settings, db, events, signals=None, sampler=None, latency=None,
                 interval_s: float | None = None):
        self.settings = settings
        self.events = events
        self.inputs = checks.Inputs(db=db, signals=signals, sampler=sampler, latency=latency)
        self.interval_s = interval_s or settings.alert_interval_s
        self.notifier = Notifier()
        self.rules = load_rules_file(settings)  # refuses a malformed file: the daemon too
        self._lock = threading.RLock()
        self._firing: dict[tuple[str, str], Firing] = {}
        self._pending: dict[tuple[str, str], float] = {}
        self._state: dict[str, dict] = {}
        self._broken: set[str] = set()  # rules whose check failed (logged once each)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- rules -----------------------------------------------------------------------------

    def load(self, text: str) -> list[dict]:
        """Replace the rules in force with those of ``text`` (YAML), and write them to the
        rules file; or raise AlertRulesError and keep the rules in force."""
        rules = parse_rules(text)
        path = rules_path(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        # a temporary file of its own (0600) per call: two loads at once never share one
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        with self._lock:
            self.rules = rules
            names = {r.name for r in rules}
            self._state = {k: v for k, v in self._state.items() if k in names}
        log.info("alert rules loaded: %d rule(s)", len(rules))
        self.wake()
        return self.describe()

    def describe(self) -> list[dict]:
        with self._lock:
            return [describe(r) for r in self.rules]

    def firing(self, teams: set[str] | None = None) -> list[dict]:
        """What fires now, for a reader of ``teams`` (None: every alert)."""
        with self._lock:
            shown = [f for f in self._firing.values()
                     if teams is None or (f.team is not None and f.team in teams)]
        return [f.as_dict() for f in sorted(shown, key=lambda f: (f.since, f.rule, f.key))]

    # -- the thread ------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self.notifier.start()
        self._thread = threading.Thread(target=self._run, name="llmos-alerts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.notifier.stop()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        pruned = 0.0
        while not self._stop.is_set():
            try:
                self.evaluate()
                if time.monotonic() - pruned >= PRUNE_EVERY_S:  # the event log stays bounded
                    pruned = time.monotonic()
                    self.events.prune()
            except Exception:  # a broken pass must not end the thread
                log.exception("alert evaluation failed")
            self._wake.wait(self.interval_s)
            self._wake.clear()

    # -- one pass --------------------------------------------------------------------------

    def evaluate(self, now: float | None = None) -> None:
        """Evaluate every rule once: fire, hold or resolve; write the events."""
        now = time.time() if now is None else now
        if self.inputs.latency is not None:
            self.inputs.latency.observe(now)
        with self._lock:
            rules = list(self.rules)
        changes: list[tuple[str, Firing, object]] = []
        found_keys: set[tuple[str, str]] = set()
        for rule in rules:
            found = self._check(rule, now)
            if found is None:  # the check failed: keep its alerts as they are
                found_keys |= {k for k in self._firing if k[0] == rule.name}
                continue
            for key, finding in found.items():
                found_keys.add((rule.name, key))
                changes.extend(self._hold(rule, key, finding, now))
        with self._lock:
            for k in [k for k in self._pending if k not in found_keys]:
                del self._pending[k]
            for k in [k for k in self._firing if k not in found_keys]:
                firing = self._firing.pop(k)
                changes.append(("resolved", firing, self._rule(firing.rule)))
        if changes:
            self._announce(changes)

    def _check(self, rule, now: float) -> dict | None:
        need = checks.NEEDS.get(rule.kind, "signals")
        if getattr(self.inputs, need) is None:
            return {}
        try:
            if rule.kind in checks.STATEFUL:
                state = self._state.setdefault(rule.name, {})
                found = checks.CHECKS[rule.kind](rule.params, self.inputs, now, state)
            else:
                found = checks.CHECKS[rule.kind](rule.params, self.inputs, now)
        except Exception:  # this rule only: the others are evaluated as ever
            if rule.name not in self._broken:  # logged once, not every pass
                self._broken.add(rule.name)
                log.exception("alert rule %s could not be evaluated (logged once; its "
                              "alerts stay as they are until it can)", rule.name)
            return None
        if rule.name in self._broken:
            self._broken.discard(rule.name)
            log.info("alert rule %s is evaluated again", rule.name)
        return found

    def _hold(self, rule, key: str, finding: checks.Finding, now: float) -> list:
        k = (rule.name, key)
        with self._lock:
            if k in self._firing:
                f = self._firing[k]
                f.value, f.message = finding.value, finding.message
                return []
            since = self._pending.setdefault(k, now)
            if now - since < rule.for_s:
                return []
            del self._pending[k]
            firing = Firing(rule.name, key, now, finding.value, finding.message, finding.team,
                            rule.severity)
            self._firing[k] = firing
        return [("firing", firing, rule)]

    def _rule(self, name: str):
        return next((r for r in self.rules if r.name == name), None)

    def _announce(self, changes: list) -> None:
        """Write one event per change (one transaction), then queue the webhooks."""
        db = self.inputs.db
        with db.session() as s:
            for action, f, rule in changes:
                self.events.record(s, "alert", f.rule, action, f.team, f.severity,
                                   detail={"key": f.key, "value": f.value,
                                           "message": f.message,
                                           "kind": rule.kind if rule else None})
        for action, f, rule in changes:
            log.info("alert %s %s: %s", f.rule, action, f.message)
            if rule is not None and rule.webhook:
                self.notifier.submit(rule.webhook, {
                    "rule": f.rule, "kind": rule.kind, "severity": f.severity,
                    "action": action, "key": f.key, "value": f.value, "message": f.message,
                    "team": f.team, "at": utcnow().isoformat()})

    def counts(self) -> dict[tuple[str, str], int]:
        """Alerts firing now per (rule, severity), every rule in force included."""
        with self._lock:
            counts = {(r.name, r.severity): 0 for r in self.rules}
            for f in self._firing.values():
                counts[(f.rule, f.severity)] = counts.get((f.rule, f.severity), 0) + 1
        return counts


class FiringCollector:
    """``llmos_alerts_firing{rule,severity}`` for ``Metrics.add_collector`` (no team
    label: administrators only)."""

    def __init__(self, engine: AlertEngine):
        self.engine = engine

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily("llmos_alerts_firing", "Alerts firing now, by rule.",
                                 labels=["rule", "severity"])

    def describe(self):
        yield self._family()

    def collect(self):
        family = self._family()
        for (rule, severity), n in sorted(self.engine.counts().items()):
            family.add_metric([rule, severity], n)
        yield family


class Notifier:
    """Webhook calls, off the evaluator's thread: one thread running an event loop, with a
    bounded queue and a worker task per URL, so a slow or dead webhook delays only its own
    calls. Each payload is POSTed as JSON; an attempt has a total deadline of
    ``timeout_s`` (connecting, sending and reading together: a server that trickles its
    answer byte by byte is cut off too); a transport error, a timeout, a 429 or a 5xx is
    retried with exponential back-off (``base_s`` doubling up to ``max_s``, ``attempts``
    in all). A full queue drops the call (logged); so does the last failed attempt. A
    URL's worker ends when its queue has been idle ``idle_s``; at most ``max_urls``
    workers at once (a call for a further URL is dropped, logged)."""

    def __init__(self, attempts: int = 5, base_s: float = 0.5, max_s: float = 30.0,
                 timeout_s: float = 5.0, size: int = 100, max_urls: int = 64,
                 idle_s: float = 60.0):
        self.attempts, self.base_s, self.max_s = attempts, base_s, max_s
        self.timeout_s, self.size, self.max_urls, self.idle_s = timeout_s, size, max_urls, idle_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: dict[str, asyncio.Queue] = {}
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.delivered = 0
        self.failed = 0

    def submit(self, url: str, payload: dict) -> bool:
        """Queue a call (from any thread); False when the notifier is not running."""
        loop = self._loop
        if loop is None:
            return False
        try:
            loop.call_soon_threadsafe(self._enqueue, url, payload)
        except RuntimeError:  # its loop has closed
            return False
        return True

    def start(self) -> None:
        if self._thread is None:
            self._ready.clear()
            self._thread = threading.Thread(target=self._run, name="llmos-webhooks",
                                            daemon=True)
            self._thread.start()
            self._ready.wait(10)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._stopping.set)
            except RuntimeError:
                pass
        if thread is not None:
            thread.join(timeout=10)
        self._thread = None

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s,
                                         follow_redirects=False) as self._http:
                await self._stopping.wait()
                workers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in workers:
                    t.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
        finally:
            self._loop = None
            self._queues.clear()

    def _enqueue(self, url: str, payload: dict) -> None:
        q = self._queues.get(url)
        if q is None:
            if len(self._queues) >= self.max_urls:
                log.warning("alert webhooks: %d addresses busy already: dropped %s %s",
                            self.max_urls, payload.get("rule"), payload.get("action"))
                return
            q = self._queues[url] = asyncio.Queue(maxsize=self.size)
            asyncio.get_running_loop().create_task(self._worker(url, q))
        try:
            q.put_nowait(payload)
        except asyncio.QueueFull:
            log.warning("alert webhook queue full: dropped %s %s", payload.get("rule"),
                        payload.get("action"))

    async def _worker(self, url: str, q: asyncio.Queue) -> None:
        try:
            while True:
                try:
                    payload = await asyncio.wait_for(q.get(), self.idle_s)
                except TimeoutError:
                    if q.empty():
                        return
                    continue
                await self._deliver(url, payload)
        finally:
            if self._queues.get(url) is q:
                del self._queues[url]

    async def _deliver(self, url: str, payload: dict) -> None:
        why = ""
        for attempt in range(self.attempts):
            try:
                resp = await asyncio.wait_for(self._http.post(url, json=payload),
                                              self.timeout_s)
                if resp.status_code < 300:
                    self.delivered += 1
                    return
                why = f"HTTP {resp.status_code}"
                if resp.status_code < 500 and resp.status_code != 429:
                    break  # the webhook refuses it: retrying will not help
            except TimeoutError:
                why = f"no answer within {self.timeout_s:g} s"
            except httpx.HTTPError as e:
                why = type(e).__name__
            if attempt + 1 < self.attempts:
                await asyncio.sleep(min(self.max_s, self.base_s * 2 ** attempt))
        self.failed += 1
        log.warning("alert webhook for %s %s failed (%s); not retried further",
                    payload.get("rule"), payload.get("action"), why)


__all__ = [
    "AlertEngine",
    "AlertRulesError",
    "Firing",
    "FiringCollector",
    "Notifier",
    "load_rules_file",
    "rules_path",
]
