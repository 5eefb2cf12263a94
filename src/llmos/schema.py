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


YAML_MAX_DEPTH = 32  # nesting of lists and mappings in a recipe or pipeline file


def load_yaml(text: str, what: str, max_depth: int = YAML_MAX_DEPTH) -> Any:
    """YAML text a user sent (a recipe, a pipeline), read safely: a 422 (``InvalidRequest``)
    that starts with ``what`` for text that is not YAML, for aliases (``*name``: a few
    hundred bytes of nested ones expand to billions of values once read) and for nesting
    deeper than ``max_depth`` — both refused before anything is built. A value PyYAML
    cannot build (an integer of over 4300 digits, an impossible date) is the same 422."""
    import yaml

    from llmos.errors import InvalidRequest

    try:
        depth = 0
        for event in yaml.parse(text, yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise InvalidRequest(f"{what}: YAML aliases (*name) are not accepted; write "
                                     "the value out")
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > max_depth:
                    raise InvalidRequest(f"{what}: nested more than {max_depth} levels deep")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
        return yaml.safe_load(text)
    except InvalidRequest:
        raise
    except yaml.YAMLError as e:
        raise InvalidRequest(f"{what}: not valid YAML: {str(e).splitlines()[0]}") from None
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as e:
        # what PyYAML's constructors let through: an integer of over 4300 digits
        # (ValueError), a date out of range ...; the same clear 422, never a traceback
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise InvalidRequest(f"{what}: not valid YAML: {first}") from None
