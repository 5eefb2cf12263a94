"""Schemathesis fuzzes every operation of the live OpenAPI schema (a bounded number of
examples each, positive and negative, with a fixed seed so CI is repeatable): no answer is
a 500, every status code, content type, header and body conforms to the schema,
schema-violating requests are refused, unsupported methods get 405 with the right Allow
header, and requests without valid credentials get 401.

It runs its own command line (`st run`), as the administrator for every operation but
dataset ingest, which runs as a developer confined to one folder (an administrator may
have llmos read any path on the host, and a fuzzer should not ingest the whole disk).
Every integer the schema declares carries its range, so the fuzzer also sends integers just
beyond it; two sweeps over the same schema add what it does not try: integers far beyond
any column (2**63, 10**30) in every path parameter and every integer of every request body,
and a body over the size limit on every write.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from live import LiveDaemon

ST = Path(sys.executable).parent / "st"
EXAMPLES = 20  # per operation and phase
SEED = 20261123
# "A schema-valid request must be accepted" does not hold for an API whose rules go beyond
# its schema (an unknown program, a file that is not there, a name already taken): those
# are refused with a clear 4xx, which the other checks still hold to the schema.
EXCLUDED_CHECKS = "positive_data_acceptance"
ALWAYS_EXCLUDED = [
    # Revoking tokens by fuzzed ids would revoke the fuzzer's own: tests/security has it.
    ("--exclude-path", "/v1/tokens/{token_id}"),
]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz") / "home"
    home.mkdir()
    inbox = tmp_path_factory.mktemp("fuzz-inbox")
    (inbox / "doc.txt").write_text("a small document\n")
    live = LiveDaemon(home, env={"LLMOS_INGEST_ROOTS": str(inbox),
                                 # the fuzzer's deliberate bad tokens must get 401, not 429
                                 "LLMOS_AUTH_FREE_FAILURES": "1000000"}).start()
    developer = live.client.users.create("fuzzer", team="default")["token"]
    yield live, {"admin": live.admin_token, "developer": developer}
    live.stop()


def st(live: LiveDaemon, token: str, *selection: str) -> subprocess.CompletedProcess:
    args = [str(ST), "run", f"{live.url}/openapi.json", "-H", f"Authorization: Bearer {token}",
            "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--exclude-checks",
            EXCLUDED_CHECKS, "--phases", "examples,coverage,fuzzing", "--workers", "1",
            "--request-timeout", "60", "--warnings", "off", "--no-color", *selection]
    for flag, value in ALWAYS_EXCLUDED:
        args += [flag, value]
    return subprocess.run(args, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("who,selection", [
    ("admin", ("--exclude-path", "/v1/datasets/ingest")),
    ("developer", ("--include-path", "/v1/datasets/ingest")),
])
def test_no_server_errors_and_no_schema_violations(fuzzed, who, selection):
    live, tokens = fuzzed
    result = st(live, tokens[who], *selection)
    report = result.stdout[-12000:] + result.stderr[-2000:]
    assert result.returncode == 0, report
    assert "Server error" not in report and "unique failures" not in report


HUGE = (2**63, -(2**63) - 1, 10**30)
UPLOAD = "/v1/artifacts"  # a raw body with its own limit (tests/api/test_api.py)
# Valid bodies the huge integers are put into, so they get past the other fields' checks.
BASES = {"/v1/jobs": {"program": "noop"}, "/v1/jobs/batch": {"jobs": [{"program": "noop"}]},
         "/v1/deployments": {"model": "nothing-here"}}


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in patch.items()}}
    if isinstance(base, list) and isinstance(patch, list) and base and patch:
        return [_merge(base[0], patch[0])]
    return patch


def _operations(live: LiveDaemon) -> Iterator[tuple[str, str, dict, dict]]:
    with live.http() as http:
        schema = http.get("/openapi.json").json()
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            if any(flag == "--exclude-path" and value == path
                   for flag, value in ALWAYS_EXCLUDED):
                continue
            yield path, method.upper(), op, schema["components"]["schemas"]


def _resolve(node: dict, defs: dict) -> dict:
    while "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[1]]
    return node


def _integer_bodies(node: dict, defs: dict, value: int, depth: int = 0) -> Iterator[Any]:
    """Minimal JSON values holding ``value`` at each integer place of the schema."""
    node = _resolve(node, defs)
    if depth > 4:
        return
    if node.get("type") == "integer":
        yield value
    for sub in node.get("anyOf", []) + node.get("allOf", []):
        yield from _integer_bodies(sub, defs, value, depth + 1)
    if isinstance(node.get("items"), dict):
        for inner in _integer_bodies(node["items"], defs, value, depth + 1):
            yield [inner]
    for name, sub in (node.get("properties") or {}).items():
        for inner in _integer_bodies(sub, defs, value, depth + 1):
            yield {name: inner}


def _url(path: str, op: dict, value: int) -> str:
    for p in op.get("parameters", []):
        if p["in"] == "path":
            kind = p.get("schema", {}).get("type")
            path = path.replace(f"{{{p['name']}}}", str(value) if kind == "integer" else "x")
    return path


def test_integers_far_beyond_any_column_are_refused_never_a_500(fuzzed):
    live, _ = fuzzed
    failures, sent = [], 0
    with live.http() as http:
        for path, method, op, defs in _operations(live):
            body = (op.get("requestBody") or {}).get("content", {}).get("application/json")
            int_path = any(p["in"] == "path" and p.get("schema", {}).get("type") == "integer"
                           for p in op.get("parameters", []))
            for value in HUGE:
                tries = [(_url(path, op, value), None)] if int_path else []
                if body:
                    url = _url(path, op, 1)
                    tries += [(url, _merge(BASES.get(path, {}), b))
                              for b in _integer_bodies(body["schema"], defs, value)]
                for url, json_body in tries:
                    resp = http.request(method, url, json=json_body)
                    sent += 1
                    if resp.status_code >= 500 or resp.status_code < 400:
                        failures.append(f"{method} {url} {json_body}: {resp.status_code}")
    assert failures == [] and sent > 100


@pytest.fixture(scope="module")
def small_bodies(tmp_path_factory):
    """A daemon that takes request bodies of 1 MB at most (the fuzzer's largest bodies,
    arrays of their maximum length, must meet the schema's rules, not this limit)."""
    home = tmp_path_factory.mktemp("small-bodies") / "home"
    home.mkdir()
    live = LiveDaemon(home, env={"LLMOS_MAX_BODY_MB": "1"}).start()
    yield live
    live.stop()


def test_every_write_refuses_a_body_over_the_limit_with_a_413(small_bodies):
    live = small_bodies
    big = b'{"x": "' + b"x" * (1 << 20) + b'"}'
    failures = []
    with live.http() as http:
        for path, method, op, _ in _operations(live):
            if method not in ("POST", "PUT", "PATCH") or path == UPLOAD:
                continue
            resp = http.request(method, _url(path, op, 1), content=big,
                                headers={"content-type": "application/json"})
            message = resp.json()["error"]["message"]
            if resp.status_code != 413 or "LLMOS_MAX_BODY_MB" not in message:
                failures.append(f"{method} {path}: {resp.status_code} {message}")
    assert failures == []
