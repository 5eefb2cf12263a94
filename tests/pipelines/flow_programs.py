"""Small programs the pipeline tests run as steps (each a real kernel job)."""

from __future__ import annotations

from pathlib import Path


def square(ctx, x: float) -> dict:
    return {"value": x * x}


def total(ctx, values: list) -> dict:
    return {"value": sum(v["value"] if isinstance(v, dict) else v for v in values)}


def read_text(ctx, path: str) -> dict:
    """Fails while ``path`` is missing (a step made to fail, then fixed)."""
    if not Path(path).exists():
        raise RuntimeError(f"{path} is missing")
    return {"value": Path(path).read_text().strip()}


def pair(ctx, left, right) -> dict:
    return {"value": f"{left}+{right}"}


def fake_model(ctx) -> dict:
    """Returns something shaped almost like a model version (no version number)."""
    return {"m": {"kind": "model", "name": "x"}}


def no_output(ctx) -> dict:
    return {"other": 1}
