"""Shared pieces of request schemas: strict request bodies and ISO 8601 times.

Request bodies refuse unknown fields and take JSON types as they are — ``false`` is not
``0``, ``"1"`` is not ``1`` — so a client's mistake is a 422 that names the field, never a
silent coercion. Times in query strings are ISO 8601 only (``0.5`` is not a time).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _iso(value):
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("not an ISO 8601 time, such as 2026-11-23T08:00:00Z") from None
    return value


IsoTime = Annotated[datetime, BeforeValidator(_iso)]
