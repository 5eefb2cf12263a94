"""Per-job control groups: a memory limit the kernel enforces, a cap on the number of
processes (and threads), and a list of every process a job started — whatever it did to
leave its process group or session.

Two layouts exist in the wild and both are handled: the unified hierarchy (cgroup v2,
``/sys/fs/cgroup`` with ``cgroup.controllers``), where one group per job holds both
controllers, and the legacy one (cgroup v1, one hierarchy per controller under
``/sys/fs/cgroup/memory`` and ``/sys/fs/cgroup/pids``), where a job gets a group in each.
Groups live under the daemon's own group, in ``llmos-<store>/job-<id>`` (``<store>`` a
hash of LLMOS_HOME: job ids are unique only within one store, and several daemons may
share a machine), so a restarted daemon finds a running job's group by its id. Where the host delegates neither (no write
access), :meth:`JobGroups.detect` returns None and the executor falls back to rlimits and
its resident-memory watchdog.
"""

from __future__ import annotations

import hashlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class JobCgroup:
    """The group(s) of one job: one per hierarchy (one on v2, memory and pids on v1)."""

    paths: tuple[Path, ...]
    version: int

    @property
    def procs_files(self) -> list[Path]:
        """Write a pid into each of these to put that process (and its future children)
        in the job's group."""
        return [p / "cgroup.procs" for p in self.paths]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for f in self.procs_files:
            try:
                found.update(int(x) for x in f.read_text().split())
            except (OSError, ValueError):
                pass
        return found

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of this job for going over its limit."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for path in self.paths:
            try:
                text = (path / name).read_text()
            except OSError:
                continue
            for line in text.splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and value.strip().isdigit() and int(value) > 0:
                    return True
        return False

    def kill_all(self) -> None:
        """SIGKILL every process in the group (none may outlive its job)."""
        if self.version == 2:
            try:
                (self.paths[0] / "cgroup.kill").write_text("1")
                return
            except OSError:
                pass
        for _ in range(50):  # a process forking while we kill: go round until empty
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def remove(self) -> None:
        for path in self.paths:
            try:
                path.rmdir()
            except OSError:
                pass


class JobGroups:
    """Where this machine lets the daemon make per-job groups, and how."""

    def __init__(self, version: int, roots: dict[str, Path]):
        self.version = version
        self.roots = roots  # controller -> the llmos folder in its hierarchy

    @classmethod
    def detect(cls, store: str) -> JobGroups | None:
        """``store`` names this daemon's store (its groups are kept apart from others')."""
        name = "llmos-" + hashlib.sha256(store.encode()).hexdigest()[:12]
        own = _own_groups()
        if (CGROUP_ROOT / "cgroup.controllers").exists():  # unified hierarchy (v2)
            try:
                available = (CGROUP_ROOT / "cgroup.controllers").read_text().split()
                if "memory" not in available:
                    return None
                root = CGROUP_ROOT / name
                root.mkdir(exist_ok=True)
                wanted = [c for c in ("memory", "pids") if c in available]
                (root / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
                return cls(2, {c: root for c in wanted})
            except OSError:
                return None
        roots = {}
        for controller in ("memory", "pids"):  # legacy hierarchies (v1)
            base = CGROUP_ROOT / controller
            if not base.is_dir():
                continue
            root = base / own.get(controller, "/").lstrip("/") / name
            try:
                root.mkdir(exist_ok=True)
            except OSError:
                continue
            roots[controller] = root
        return cls(1, roots) if "memory" in roots else None

    def create(self, job_id: int, memory_mb: int, max_processes: int) -> JobCgroup | None:
        name = f"job-{job_id}"
        made: list[Path] = []
        try:
            for controller, root in self.roots.items():
                path = root / name
                if path in made:
                    continue
                path.mkdir(exist_ok=True)
                made.append(path)
                if self.version == 2:
                    (path / "memory.max").write_text(str(memory_mb << 20))
                    _write_if_there(path / "memory.swap.max", "0")
                    _write_if_there(path / "pids.max", str(max_processes))
                elif controller == "memory":
                    (path / "memory.limit_in_bytes").write_text(str(memory_mb << 20))
                    _write_if_there(path / "memory.memsw.limit_in_bytes", str(memory_mb << 20))
                else:
                    (path / "pids.max").write_text(str(max_processes))
        except OSError:
            for path in made:
                JobCgroup((path,), self.version).remove()
            return None
        return JobCgroup(tuple(made), self.version)

    def find(self, job_id: int) -> JobCgroup | None:
        """The group of a job a previous daemon started (restart adoption)."""
        paths = tuple(dict.fromkeys(r / f"job-{job_id}" for r in self.roots.values()))
        paths = tuple(p for p in paths if p.is_dir())
        return JobCgroup(paths, self.version) if paths else None

    @property
    def limits_processes(self) -> bool:
        return "pids" in self.roots


def enter_then_exec(cgroup: JobCgroup | None, argv: list[str]) -> list[str]:
    """``argv`` behind a shell that first moves itself into the job's groups, so that the
    job's very first process — and so everything it starts — is inside them."""
    if cgroup is None:
        return argv
    files = [str(f) for f in cgroup.procs_files]
    script = ('n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; '
              'shift; n=$((n-1)); done; exec "$@"')
    return ["/bin/sh", "-c", script, "llmos-enter", str(len(files)), *files, *argv]


def _write_if_there(path: Path, value: str) -> None:
    if path.exists():
        path.write_text(value)


def _own_groups() -> dict[str, str]:
    """This process's group per v1 controller, from /proc/self/cgroup."""
    groups: dict[str, str] = {}
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(","):
                if c:
                    groups[c] = path
    except (OSError, ValueError):
        pass
    return groups
