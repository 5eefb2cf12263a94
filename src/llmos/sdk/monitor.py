"""``client.monitor``: what the machine is doing now and how it was used (``/v1/monitor``).

    top = Client().monitor.overview()      # nodes, running and pending jobs, deployments
    cpu = Client().monitor.usage("job", 12, window_s=600)["samples"]

The daemon filters every answer to the caller's teams (administrators see all; nodes
and their devices are visible to every authenticated user), so what a client gets is
what its token may see. Every call returns plain dicts; errors raise ``APIError``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from llmos.sdk.client import Client

USAGE_KINDS = ("job", "node", "gpu")
# The daemon sends a keep-alive every 15 s: a stream silent for this long is dead.
FOLLOW_READ_TIMEOUT_S = 45.0


class Monitor:
    """``client.monitor``: the live overview and usage history."""

    def __init__(self, client: Client):
        self._c = client

    def overview(self) -> dict:
        """Now: ``nodes`` (capacity, allocated, measured use, GPUs), ``running`` jobs
        (with their measured use), ``pending`` jobs (with why each waits) and
        ``deployments`` (replicas, ready workers, queue depth)."""
        return self._c.request("GET", "/v1/monitor/overview").json()

    def usage(self, kind: str, subject: str | int, window_s: float = 3600) -> dict:
        """The sampled use of one ``job`` (its id), ``node`` (its name) or ``gpu``
        (NODE/INDEX) over the last ``window_s`` seconds: ``samples`` of cpu, memory_mb,
        I/O bytes per second and GPU use, at ``resolution_s``."""
        if kind not in USAGE_KINDS:
            raise ValueError(f"kind is one of {', '.join(USAGE_KINDS)}, not {kind!r}")
        params = {"kind": kind, "subject": str(subject), "window_s": window_s}
        return self._c.request("GET", "/v1/monitor/usage", params=params).json()

    # -- events and alerts (helper B: /v1/events, /v1/alerts) ------------------------------

    def events(self, kinds: str | list[str] | None = None, subject: str | int | None = None,
               since: int | None = None, limit: int = 100) -> list[dict]:
        """Events you may see, oldest first: the newest ``limit``, or those after id
        ``since``. ``kinds``: job, deployment, model, dataset, node, alert."""
        return self.events_page(kinds, subject, since, limit)["events"]

    def events_page(self, kinds: str | list[str] | None = None,
                    subject: str | int | None = None, since: int | None = None,
                    limit: int = 100) -> dict:
        """As :meth:`events`, with ``next``: the id to pass as ``since`` to read on (the
        daemon passes over other teams' events for you; an empty ``events`` with a
        ``next`` beyond ``since`` means there is more to scan)."""
        return self._c.request("GET", "/v1/events",
                               params=_event_params(kinds, subject, since, limit)).json()

    def follow_events(self, kinds: str | list[str] | None = None,
                      subject: str | int | None = None, since: int | None = None):
        """Yield events as they happen (a server-sent-event stream; from now, or after id
        ``since``), until the caller stops iterating or the daemon ends the stream (the
        generator then returns: its token was revoked, or the daemon is stopping). A
        daemon that sends nothing, not even its 15 s keep-alive, for
        ``FOLLOW_READ_TIMEOUT_S`` raises ``DaemonUnreachable``."""
        from llmos.sdk.client import DaemonUnreachable

        params = {**_event_params(kinds, subject, since, 100), "follow": "true"}
        with self._c.stream("GET", "/v1/events", params=params,
                            headers={"Accept": "text/event-stream"},
                            timeout=httpx.Timeout(30.0, read=FOLLOW_READ_TIMEOUT_S)) as resp:
            data: list[str] = []
            try:
                for line in resp.iter_lines():
                    if line.startswith("data:"):
                        data.append(line[5:].lstrip(" "))
                    elif not line and data:
                        yield json.loads("\n".join(data))
                        data = []
            except httpx.ReadTimeout:
                raise DaemonUnreachable(
                    f"the llmos daemon at {self._c.url} sent nothing for "
                    f"{FOLLOW_READ_TIMEOUT_S:g} s (not even a keep-alive): it hangs or the "
                    "connection is gone") from None

    def alerts(self) -> dict:
        """The alert rules in force and what fires now (of your teams)."""
        return self._c.request("GET", "/v1/alerts").json()

    def load_alert_rules(self, text: str) -> dict:
        """Replace the alert rules with those of ``text`` (the YAML file; administrators)."""
        return self._c.request("PUT", "/v1/alerts/rules", content=text.encode("utf-8"),
                               headers={"Content-Type": "application/yaml"}).json()


def _event_params(kinds, subject, since, limit: int) -> dict:
    params: dict = {"limit": limit}
    if kinds:
        params["kind"] = kinds if isinstance(kinds, str) else ",".join(kinds)
    if subject is not None:
        params["subject"] = str(subject)
    if since is not None:
        params["since"] = since
    return params
