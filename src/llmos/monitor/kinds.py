"""The kinds of events (``monitor/events.py``) and the one parser of a ``kind`` filter,
shared by the API and the CLI. Standard library only, so the CLI reads it without
loading the store."""

from __future__ import annotations

KINDS = ("job", "deployment", "model", "dataset", "node", "alert")
PUBLIC_KINDS = ("node",)  # shown to every authenticated reader


def parse_kinds(kind: str | None) -> list[str] | None:
    """The kinds of a comma-separated filter (None: every kind); ValueError naming the
    first unknown one."""
    if not kind:
        return None
    kinds = [k.strip() for k in kind.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown event kind {unknown[0]!r}; one of {', '.join(KINDS)}")
    return kinds
