"""The Grafana dashboard and the Prometheus scrape configuration in examples/monitoring/:
every query in the dashboard names only series that llmos exports (read from the
``/metrics`` text of a real system's registry), and the scrape configuration presents a
bearer token from a file to ``/metrics``.

(Named ``test_monitoring_examples.py``: tests/pipelines/ already holds a
``test_examples.py``, and test modules of this tree need distinct names.)
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
import yaml

from llmos.config import Settings
from llmos.system import System

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "monitoring"
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
            "offset", "and", "or", "unless", "inf", "nan"}
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count", "_created"),
            "counter": ("", "_created"), "gauge": ("",), "summary": ("_sum", "_count", "")}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads: identifiers that are not inside label
    matchers, grouping clauses, ranges or strings, and are neither functions nor
    keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        rest = text[m.end():].lstrip()
        if rest.startswith("(") or m.group(0).lower() in KEYWORDS:
            continue
        if m.start() > 0 and (text[m.start() - 1].isdigit() or text[m.start() - 1] == "."):
            continue  # an exponent or unit of a number (1e3)
        names.add(m.group(0))
    return names


def expressions(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for v in node.values() for e in expressions(v)]
    if isinstance(node, list):
        return [e for v in node for e in expressions(v)]
    return []


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> set[str]:
    """Every series name the registry of a real system exposes (from its TYPE lines, so
    families with no series yet count too)."""
    system = System(Settings(home=tmp_path_factory.mktemp("examples") / "home", cpus=1))
    try:
        text = system.metrics.render().decode()
    finally:
        asyncio.run(system.close())
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        base = name.removesuffix("_total") if kind == "counter" else name
        names.update((name if s == "" else base + s) for s in SUFFIXES.get(kind, ("",)))
    return names


def test_the_expression_parser_finds_metric_names():
    assert metric_names('histogram_quantile(0.95, sum by (le, team) (rate('
                        'llmos_a_bucket{team=~"$team"}[5m])))') == {"llmos_a_bucket"}
    assert metric_names("llmos_a / llmos_b * 1e3 > bool 2") == {"llmos_a", "llmos_b"}


def test_every_dashboard_query_names_a_metric_llmos_exports(exported):
    dashboard = json.loads((EXAMPLES / "grafana-dashboard.json").read_text())
    exprs = expressions(dashboard["panels"]) + expressions(dashboard["templating"])
    exprs += [v["definition"].split("(", 1)[1].split(",")[0]
              for v in dashboard["templating"]["list"] if "definition" in v]
    assert len(exprs) >= 20
    used = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        unknown = names - exported
        assert not unknown, f"{expr!r} reads {sorted(unknown)}, which llmos does not export"
        used |= names
    # the panels the issue asks for are there
    for wanted in ("llmos_jobs", "llmos_job_queue_wait_seconds_bucket",
                   "llmos_node_cpu_used_cores", "llmos_node_memory_used_bytes",
                   "llmos_gpu_utilization_ratio", "llmos_team_cpu_used_cores",
                   "llmos_serving_request_seconds_bucket",
                   "llmos_serving_completion_tokens_total",
                   "llmos_scheduler_pass_seconds_bucket"):
        assert wanted in used, wanted
    assert {p["gridPos"]["w"] for p in dashboard["panels"]} <= {12, 24}


def test_the_scrape_configuration_sends_a_token_from_a_file_to_metrics():
    config = yaml.safe_load((EXAMPLES / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"] == {"type": "Bearer",
                                    "credentials_file": "/etc/prometheus/llmos.token"}
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:8470"]
