"""Alert rules as written in YAML: one pydantic model of parameters per kind, and the
parser that refuses a malformed file naming the rule (by name and index) and the field.

    rules:
      - name: stuck-jobs
        kind: job_waiting
        severity: warning          # info | warning | critical
        params: {minutes: 30}
        for_s: 0                   # how long the condition must hold before it fires
        webhook: https://hooks.example/llmos   # optional: POSTed on firing and resolving

The file is read with ``llmos.schema.load_yaml`` (no aliases, bounded nesting). This
module knows nothing of how rules are evaluated (``monitor/alerts.py``).
"""

from __future__ import annotations

import operator
import re
from functools import reduce
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from llmos.errors import InvalidRequest
from llmos.schema import load_yaml

MAX_RULES = 200


class AlertRulesError(InvalidRequest):
    """A rules file that cannot be used: its message names the rule and the field."""


DAY_S = 86400
MAX_WINDOW_S = 30 * DAY_S  # no window or bound reaches further back than the history
MAX_COUNT = 1_000_000


class _Params(BaseModel):
    # infinities and NaN are refused: every number has an upper bound (``MAX_*``)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class JobWaiting(_Params):
    """A job pending longer than the bound."""

    minutes: float | None = Field(default=None, gt=0, le=MAX_WINDOW_S / 60)
    seconds: float | None = Field(default=None, gt=0, le=MAX_WINDOW_S)

    @model_validator(mode="after")
    def _one_bound(self):
        if (self.minutes is None) == (self.seconds is None):
            raise ValueError("give exactly one of minutes or seconds")
        return self

    @property
    def bound_s(self) -> float:
        return self.seconds if self.seconds is not None else self.minutes * 60


class FailureRate(_Params):
    """The share of a team's jobs that failed, among those that ended in the window."""

    window_s: float = Field(default=3600, gt=0, le=MAX_WINDOW_S)
    threshold: float = Field(default=0.5, ge=0, le=1)
    min_jobs: int = Field(default=5, ge=1, le=MAX_COUNT)


class NodeMemory(_Params):
    percent: float = Field(default=90, gt=0, le=100)


class GpuIdle(_Params):
    """A GPU allocated to a job but used below ``below`` (0..1) for ``window_s``."""

    below: float = Field(default=0.05, ge=0, le=1)
    window_s: float = Field(default=600, gt=0, le=DAY_S)


class DeploymentLatency(_Params):
    """A deployment's p99 request time over the window above ``p99_s``."""

    p99_s: float = Field(gt=0, le=3600)
    window_s: float = Field(default=300, gt=0, le=DAY_S)
    min_requests: int = Field(default=1, ge=1, le=MAX_COUNT)
    deployment: str | None = Field(default=None, max_length=100)


class AuthFailures(_Params):
    """At least ``count`` failed authentications from one address in the window."""

    count: int = Field(default=20, ge=1, le=MAX_COUNT)
    window_s: float = Field(default=60, gt=0, le=DAY_S)


class TokenNewAddress(_Params):
    """A token used from an address it was not used from before; firing ``hold_s``."""

    hold_s: float = Field(default=300, gt=0, le=86400)


class ArtifactDownloads(_Params):
    """More than ``count`` artifact downloads by one token in the window."""

    count: int = Field(default=100, ge=1, le=MAX_COUNT)
    window_s: float = Field(default=600, gt=0, le=DAY_S)


class AdminCrossTeamReads(_Params):
    """An administrator token reading objects of more than ``teams`` teams (of which it is
    no member) in the window."""

    teams: int = Field(default=3, ge=1, le=MAX_COUNT)
    window_s: float = Field(default=600, gt=0, le=86400)


PARAMS: dict[str, type[_Params]] = {
    "job_waiting": JobWaiting, "failure_rate": FailureRate, "node_memory": NodeMemory,
    "gpu_idle": GpuIdle, "deployment_latency": DeploymentLatency,
    "auth_failures": AuthFailures, "token_new_address": TokenNewAddress,
    "artifact_downloads": ArtifactDownloads, "admin_cross_team_reads": AdminCrossTeamReads,
}


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    severity: Literal["info", "warning", "critical"] = "warning"
    for_s: float = Field(default=0, ge=0, le=86400)
    webhook: str | None = Field(default=None, max_length=2000)

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and re.fullmatch(r"https?://[^\s/]+(/\S*)?", url) is None:
            raise ValueError("must be an http:// or https:// URL")
        return url


def _rule_class(kind: str, params: type[_Params]) -> type[_Rule]:
    fields = {"kind": (Literal[kind], ...),
              "params": (params, Field(default_factory=params) if _defaults(params) else ...)}
    from pydantic import create_model

    return create_model(f"Rule_{kind}", __base__=_Rule, **fields)


def _defaults(params: type[_Params]) -> bool:
    try:
        params()
        return True
    except ValidationError:
        return False


RULES = {kind: _rule_class(kind, p) for kind, p in PARAMS.items()}
_ANY = TypeAdapter(Annotated[reduce(operator.or_, RULES.values()), Field(discriminator="kind")])


def parse_rules(text: str, what: str = "alert rules") -> list[_Rule]:
    """Rules from YAML text (a ``rules:`` list, or a bare list), or AlertRulesError naming
    the rule and the field at fault."""
    try:
        data = load_yaml(text, what)
    except InvalidRequest as e:
        raise AlertRulesError(e.message) from None
    if data is None:
        return []
    if isinstance(data, dict):
        extra = set(data) - {"rules"}
        if extra:
            raise AlertRulesError(f"{what}: unknown top-level key {min(extra)!r} "
                                  "(the file holds 'rules:', a list)")
        data = data.get("rules") or []
    if not isinstance(data, list):
        raise AlertRulesError(f"{what}: 'rules' must be a list of rules")
    if len(data) > MAX_RULES:
        raise AlertRulesError(f"{what}: at most {MAX_RULES} rules")
    rules, names = [], set()
    for i, item in enumerate(data):
        rule = _one(item, i, what)
        if rule.name in names:
            raise AlertRulesError(f"{what}: rule {rule.name!r} (rules[{i}]): name: "
                                  "another rule has this name")
        names.add(rule.name)
        rules.append(rule)
    return rules


def _one(item, i: int, what: str) -> _Rule:
    label = f"rules[{i}]"
    if not isinstance(item, dict):
        raise AlertRulesError(f"{what}: {label} must be a mapping (name, kind, params ...)")
    name = item.get("name")
    if isinstance(name, str) and name:
        label = f"rule {name[:100]!r} ({label})"
    kind = item.get("kind")
    if kind not in RULES:
        shown = f"unknown kind {kind!r}" if kind is not None else "missing"
        raise AlertRulesError(f"{what}: {label}: kind: {shown}; one of {', '.join(RULES)}")
    try:
        return _ANY.validate_python(item)
    except ValidationError as e:
        first = e.errors()[0]
        loc = [str(p) for p in first["loc"]]
        if loc and loc[0] == kind:
            loc = loc[1:]
        field = ".".join(loc) or "rule"
        message = first["msg"].removeprefix("Value error, ")
        raise AlertRulesError(f"{what}: {label}: {field}: {message}") from None


def rules_path(settings) -> Path:
    """Where the rules live: ``LLMOS_ALERTS_FILE``, else ``LLMOS_HOME/alerts.yaml``."""
    return Path(settings.alerts_file).expanduser() if settings.alerts_file else (
        settings.home_dir / "alerts.yaml")


def load_rules_file(settings) -> list:
    """The rules of the configured file (none when the default file is absent), or
    AlertRulesError naming the file, the rule and the field."""
    path = rules_path(settings)
    if not path.exists():
        if settings.alerts_file:
            raise AlertRulesError(f"alert rules file {path} (LLMOS_ALERTS_FILE) not found")
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AlertRulesError(f"cannot read alert rules file {path}: {e}") from None
    return parse_rules(text, f"alert rules file {path}")


def describe(rule: _Rule) -> dict:
    """How the API shows a rule (the webhook's address is not shown: it may hold a key)."""
    return {"name": rule.name, "kind": rule.kind, "severity": rule.severity,
            "params": rule.params.model_dump(exclude_none=True), "for_s": rule.for_s,
            "webhook": rule.webhook is not None}
