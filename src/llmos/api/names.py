"""Resource names in paths: ``NAME`` or ``TEAM/NAME`` (``security/names.py``).

Names of datasets, models and deployments are unique within a team, so a path may qualify
one with its team: ``/v1/datasets/research/news``. Starlette's default path parameter stops
at a slash; routes write ``{name:qname}`` instead, which takes at most one slash. A second
segment that is one of the routes' own words (``news/diff``, ``bert/versions/3``) is never
read as a name, so those paths reach their routes as before (the price: a dataset called
``diff`` is addressed by its bare name only).
"""

from __future__ import annotations

from typing import Any

from fastapi import Path as PathParam
from starlette.convertors import Convertor, register_url_convertor

_PART = r"[^/]+"
# The words that follow a name in a route's path (/{name}/diff, /{name}/versions/...).
_ROUTE_WORDS = "diff|versions|aliases|scale|canary"


class QualifiedName(Convertor):
    regex = rf"(?:{_PART}/(?!(?:{_ROUTE_WORDS})(?:/|$)))?{_PART}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: Any) -> str:
        return str(value)


register_url_convertor("qname", QualifiedName())


def name_param(what: str) -> Any:
    """The ``name`` path parameter of a route written ``{name:qname}``."""
    return PathParam(min_length=1, max_length=200, description=f"{what} name, or TEAM/NAME")
