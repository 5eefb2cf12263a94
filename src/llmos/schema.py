"""Shared pieces of request schemas: strict request bodies, bounded integers and ISO 8601
times.

Request bodies refuse unknown fields and take JSON types as they are — ``false`` is not
``0``, ``"1"`` is not ``1`` — so a client's mistake is a 422 that names the field, never a
silent coercion. Every integer a body carries fits the column it is stored in: a field
without a bound of its own is refused beyond a signed 64-bit integer, and ids (``RowId``)
beyond the 32-bit id columns. Times in query strings are ISO 8601 only (``0.5`` is not a
time).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
RowId = Annotated[int, Field(ge=1, le=INT32_MAX)]
"""The id of a stored row (job, artifact, ...): the id columns are 32-bit integers."""


def out_of_range(value: Any) -> bool:
    """Whether ``value`` (or an integer inside a list of it) is beyond a signed 64-bit
    integer; free-form objects (``params``) are JSON and keep any number."""
    if isinstance(value, int) and not isinstance(value, bool):
        return not INT64_MIN <= value <= INT64_MAX
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(out_of_range(v) for v in value)
    return False


def _declare_bounds(schema: dict[str, Any], _model=None) -> None:
    """Say in the JSON schema (the OpenAPI document) what ``_fits_64_bits`` enforces, so
    clients and fuzzers see every integer's range."""
    if schema.get("type") == "integer":
        if "maximum" not in schema and "exclusiveMaximum" not in schema:
            schema["maximum"] = INT64_MAX
        if "minimum" not in schema and "exclusiveMinimum" not in schema:
            schema["minimum"] = INT64_MIN
    for key in ("properties",):
        for sub in (schema.get(key) or {}).values():
            _declare_bounds(sub)
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key) or ():
            _declare_bounds(sub)
    if isinstance(schema.get("items"), dict):
        _declare_bounds(schema["items"])


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_declare_bounds)

    @field_validator("*")
    @classmethod
    def _fits_64_bits(cls, value):
        if out_of_range(value):
            raise ValueError(f"integers must lie between {INT64_MIN} and {INT64_MAX}")
        return value


def _iso(value):
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("not an ISO 8601 time, such as 2026-11-23T08:00:00Z") from None
    return value


IsoTime = Annotated[datetime, BeforeValidator(_iso)]
