"""Imports point one way: every import between llmos's rooms (top-level packages and
modules) is an edge this file allows, with the reason for each sideways edge.

Every module under src/llmos is parsed (imports inside functions and under
TYPE_CHECKING count too); an import of another room that the map below does not allow
fails the test, naming the module, the line and the edge. The same map is written in
README.md ("Architecture") and DESIGN.md; change them together.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "llmos"

# Import nothing of llmos; every room may import them.
FLOOR = {"llmos": "the package itself: __version__ only",
         "config": "the one settings object",
         "errors": "the errors a user can cause, with their HTTP status",
         "schema": "shared pydantic types for request and response bodies",
         "extensions": "the one registry of extension points (standard library only)"}
BASE = {"store": "metadata and artifact bytes",
        "security": "roles, identities, tokens, the artifact service, encryption, audit",
        "kernel": "jobs, the scheduler, executors, the daemon"}
SUBSYSTEMS = {"data", "models", "train", "optimize", "serve", "pipelines", "monitor"}
FACES = {"api", "cli", "sdk", "web"}

# Room -> what it may import (a room, or a dotted module inside one) and why. The floor
# is allowed everywhere and not repeated.
ALLOWED: dict[str, dict[str, str]] = {
    **{room: {} for room in FLOOR},
    "store": {},
    "security": {"store": "services over the store's tables guard them with roles"},
    "kernel": {
        "store": "jobs live in the store",
        "security.rbac": "the job service checks the caller's role (services check roles)",
    },
    **{room: {"kernel": "programs run as jobs; services submit them",
              "security": "services check roles and reach artifacts through their service",
              "store": "their own tables"} for room in SUBSYSTEMS},
    "system": {room: "the composition root builds every service"
               for room in (BASE.keys() | SUBSYSTEMS)},
    "api": {room: "routes call the services"
            for room in (BASE.keys() | SUBSYSTEMS | {"system", "web"})},
    "cli": {room: "commands call a service" for room in (BASE.keys() | SUBSYSTEMS)},
    "sdk": {},  # a client of the REST API: it runs where the server's rooms are not needed
    "web": {},
}
SIDEWAYS = {
    ("train", "data"): "training reads dataset versions (their shards and schema)",
    ("train", "models"): "training starts from a registered model and registers its result",
    ("serve", "models"): "deployments serve registered model versions",
    ("optimize", "models"): "compression starts from a registered model and registers its result",
    ("optimize", "train"): "recovery, distillation and tuning trials train; comparison evaluates",
    ("optimize", "data"): "what trains reads dataset versions",
    ("serve", "monitor"): "the gateway records serving metrics",
    ("cli", "api"): "`llmos up` serves the API",
    ("cli", "sdk"): "commands reach the daemon through the SDK",
    ("cli", "system"): "`llmos up` builds the system",
    **{("pipelines", room): "a pipeline's steps are any subsystem's programs"
       for room in SUBSYSTEMS - {"pipelines"}},
}
for (_room, _target), _why in SIDEWAYS.items():
    ALLOWED[_room][_target] = _why


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, imported llmos module) for every import in ``module``'s source, those inside
    functions and relative ones too."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            for alias in node.names:  # `from llmos.x import y` may name the module x.y
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if is_module(sub) else base))
    return sorted({(line, name) for line, name in found
                   if name == "llmos" or name.startswith("llmos.")})


def allowed(room: str, target: str) -> bool:
    target_room = room_of(target)
    if target_room == room or target_room in FLOOR:
        return True
    inside = target.removeprefix("llmos.")
    return any(inside == edge or inside.startswith(edge + ".") for edge in ALLOWED[room])


def test_every_room_is_in_the_map():
    rooms = {room_of(module_name(p)) for p in PACKAGE.rglob("*.py")}
    unknown = sorted(rooms - ALLOWED.keys())
    assert not unknown, (f"room(s) {unknown} are not in tests/test_architecture.py: add "
                         "each to ALLOWED with what it may import, and to README.md and "
                         "DESIGN.md")


def test_imports_point_one_way():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        room = room_of(module_name(path))
        source = path.read_text()
        for line, target in imports(source, module_name(path), path.name == "__init__.py"):
            if room in ALLOWED and not allowed(room, target):
                bad.append(f"{path.relative_to(SRC.parent)}:{line}: {room} -> "
                           f"{room_of(target)} (imports {target})")
    assert not bad, ("imports against the direction of the rooms (allowed edges: "
                     "tests/test_architecture.py, README 'Architecture'):\n  "
                     + "\n  ".join(bad))


def test_the_allowed_edges_have_no_cycle():
    graph = {room: {room_of("llmos." + edge) for edge in edges} - {room}
             for room, edges in ALLOWED.items()}
    state: dict[str, str] = {}

    def visit(room: str, trail: list[str]) -> None:
        if state.get(room) == "done":
            return
        assert state.get(room) != "open", f"allowed edges form a cycle: {trail + [room]}"
        state[room] = "open"
        for target in sorted(graph.get(room, ())):
            visit(target, trail + [room])
        state[room] = "done"

    for room in sorted(graph):
        visit(room, [])


def test_the_check_sees_lazy_relative_and_submodule_imports():
    source = ("from .db import Database\n"
              "import json\n"
              "def f():\n"
              "    from llmos.serve import gateway\n"
              "    from llmos import errors\n")
    found = imports(source, "llmos.store.artifacts")
    assert found == [(1, "llmos.store.db"), (4, "llmos.serve.gateway"), (5, "llmos.errors")]
    assert [allowed("store", name) for _, name in found] == [True, False, True]
    assert allowed("kernel", "llmos.security.rbac")
    assert not allowed("kernel", "llmos.security.tokens")
