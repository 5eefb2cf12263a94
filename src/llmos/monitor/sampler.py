"""The sampler: every ``LLMOS_SAMPLE_INTERVAL_S`` (default 5 s) one thread measures what
each running job's process tree, this node and each GPU use, keeps the latest round in
memory (:meth:`Sampler.latest`, read by ``/metrics``, the alerts and the overview without
touching the store) and appends it to the history (:mod:`llmos.monitor.usage`), which
the same thread compacts.

What is measured, and how:
- a job: the process tree under the attempt's first process (the local executor's pid;
  in a sandbox every process of the job descends from it): cores busy from the tree's
  CPU time (reaped children included) between two rounds, resident memory (the sum of
  RSS, as the executor's memory limit counts it), disk I/O bytes per second where
  ``/proc/<pid>/io`` is readable, GPU memory of its processes and the utilisation of the
  GPUs allocated to it (llmos gives whole GPUs to one job);
- this node: cores busy (all CPUs of the machine), memory in use (total - available),
  disk I/O of the machine;
- each GPU through NVML (``pynvml``, imported lazily): utilisation, memory used and
  total, and which job's processes hold memory on it. No driver, no library or no GPU:
  no GPU rows, never an error. NVML's device index is taken as llmos's GPU index (both
  follow the PCI order unless ``CUDA_DEVICE_ORDER`` says otherwise).

On a Ray cluster only the daemon's own machine is measured (its node, when it is one of
the cluster's, and jobs of the local executor): jobs on other nodes run under their node
agents, which report no usage yet, so they show ``usage: null``.

One round costs one scan of the process table (parents only) and a few reads per job
process; the thread's own CPU time is counted (:attr:`Sampler.cpu_seconds`, exported as
``llmos_sampler_cpu_seconds_total``; ``bench/monitor.py`` measures it with 50 jobs).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field

import psutil

from llmos.monitor.usage import Usage, UsageHistory, raw_resolution

log = logging.getLogger("llmos.monitor")
MB = 1 << 20
MAX_TREE = 512  # processes measured per job per round (a fork bomb costs no more)
MAX_CACHED = 8192  # psutil objects kept between rounds, over all jobs


@dataclass(frozen=True)
class Latest:
    """One round of measurements: jobs by id, nodes by name, GPUs by ``node/index``."""

    at: float = 0.0
    jobs: dict[int, Usage] = field(default_factory=dict)
    nodes: dict[str, Usage] = field(default_factory=dict)
    gpus: dict[str, Usage] = field(default_factory=dict)


@dataclass(frozen=True)
class _Job:
    id: int
    team: str | None
    pid: int
    gpus: tuple[int, ...]
    pid_started: float = 0.0  # the root's create time, as the executor saw it


class Sampler:
    """Measures running jobs, this node and its GPUs (see the module docstring)."""

    def __init__(self, settings, daemon, db, history: UsageHistory | None = None):
        self.settings, self.daemon = settings, daemon
        self.history = history or UsageHistory(db)
        self.interval_s = settings.sample_interval_s
        self.raw_s = raw_resolution(self.interval_s)
        self.cpu_seconds = 0.0  # this sampler's own CPU time, every round included
        self.rounds = 0
        self._latest = Latest()
        self._prev_jobs: dict[int, tuple[float, float, float | None, float | None]] = {}
        self._prev_node: tuple | None = None
        self._procs: dict[int, psutil.Process] = {}  # the processes of jobs, by pid
        self._nvml = Nvml()
        self._local: tuple[str, ...] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one round at a time (the thread, or a caller)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="llmos-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._nvml.close()

    def _loop(self) -> None:
        while True:
            try:
                self.sample_once(store=True)
            except Exception:  # noqa: BLE001 - measuring must never stop for one bad round
                log.exception("a sampling round failed")
            if self._stop.wait(self.interval_s):
                return

    def latest(self) -> Latest:
        """The last round, from memory."""
        return self._latest

    # -- one round ---------------------------------------------------------------------

    def sample_once(self, store: bool = True, now: float | None = None) -> Latest:
        """Measure everything once; with ``store``, append the round to the history and
        compact it. Returns the round (also kept as :meth:`latest`)."""
        with self._lock:
            cpu0 = time.thread_time()
            try:
                now = time.time() if now is None else now
                latest = self._measure(now)
                self._latest = latest
                if store:
                    rows = [*latest.jobs.values(), *latest.nodes.values(),
                            *latest.gpus.values()]
                    self.history.record(rows, self.raw_s)
                    self.history.compact(now)
                self.rounds += 1
                return latest
            finally:
                self.cpu_seconds += time.thread_time() - cpu0

    def _measure(self, now: float) -> Latest:
        jobs, nodes = self._running()
        gpus = self._gpus(now, nodes, jobs)
        by_pid = {}
        for u in gpus.values():
            for pid, used in u.extra.get("processes", {}).items():
                by_pid[pid] = by_pid.get(pid, 0) + used
        measured = self._jobs(now, jobs, by_pid, gpus, nodes[0] if nodes else None)
        node_rows = {}
        if nodes:
            node_rows[nodes[0]] = self._node(now, nodes[0])
        return Latest(now, measured, node_rows, gpus)

    def _running(self) -> tuple[list[_Job], list[str]]:
        """The jobs of the local executor now running, and this machine's node name(s)."""
        with self.daemon.lock:
            jobs = [_Job(i, t.job.team, t.handle.pid, tuple(t.job.allocation.gpus),
                         t.handle.pid_started)
                    for i, t in self.daemon.running.items()
                    if t.executor == "local" and t.handle.pid]
            info = dict(self.daemon.nodes.info)
        return jobs, self._local_nodes(info)

    def _local_nodes(self, info: dict) -> list[str]:
        """Single-node llmos: its node. On Ray: the cluster node at this machine's address
        (none when the daemon's machine is not one of them)."""
        if not self.settings.ray_address:
            return sorted(info)[:1]
        if not self._local:  # until the cluster's nodes are known
            mine = {socket.gethostname(), "127.0.0.1", "localhost"}
            for addrs in psutil.net_if_addrs().values():
                mine.update(a.address for a in addrs)
            self._local = tuple(sorted(n for n, i in info.items() if i.address in mine))
        return list(self._local[:1])

    # -- jobs --------------------------------------------------------------------------

    def _jobs(self, now: float, jobs: list[_Job], gpu_by_pid: dict[int, float],
              gpus: dict[str, Usage], node: str | None) -> dict[int, Usage]:
        if not jobs:
            self._prev_jobs.clear()
            return {}
        table = _Table(self._procs)
        out = {}
        for job in jobs:
            tree, truncated = table.tree(job.pid, job.pid_started)
            if not tree:
                continue
            out[job.id] = self._job(now, job, tree, gpu_by_pid, gpus, node)
            if truncated:
                out[job.id].extra["truncated"] = True
        table.trim()
        self._prev_jobs = {i: v for i, v in self._prev_jobs.items() if i in out}
        return out

    def _job(self, now: float, job: _Job, tree: list[psutil.Process],
             gpu_by_pid: dict[int, float], gpus: dict[str, Usage], node: str | None) -> Usage:
        cpu = rss = 0.0
        read = write = None
        first_start = now
        pids = set()
        prev = self._prev_jobs.get(job.id)
        for p in tree:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    cpu += t.user + t.system + t.children_user + t.children_system
                    rss += p.memory_info().rss
                    if prev is None:
                        first_start = min(first_start, p.create_time())
                    pids.add(p.pid)
                    try:
                        io = p.io_counters()
                        read, write = (read or 0) + io.read_bytes, (write or 0) + io.write_bytes
                    except (psutil.AccessDenied, AttributeError):
                        pass
            except psutil.Error:
                continue
        self._prev_jobs[job.id] = (now, cpu, read, write)
        if prev is None:  # first sight: the average since the tree started
            cores = cpu / max(now - first_start, 1e-3)
            read_s = write_s = None
        else:
            span = max(now - prev[0], 1e-3)
            cores = max(0.0, cpu - prev[1]) / span
            read_s = _rate(read, prev[2], span)
            write_s = _rate(write, prev[3], span)
        gpu_mem = sum(used for pid, used in gpu_by_pid.items() if pid in pids) / MB or None
        mine = [gpus.get(f"{node}/{i}") for i in job.gpus]
        mine = [g for g in mine if g is not None]
        gpu_util = (sum(g.gpu_util for g in mine) / len(mine)) if mine else None
        if gpu_mem is None and mine:  # no per-process view: its whole GPUs' memory
            gpu_mem = sum(g.gpu_memory_mb or 0 for g in mine)
        return Usage("job", str(job.id), now, job.team, cpu=round(cores, 4),
                     memory_mb=round(rss / MB, 2), read_bytes_s=read_s, write_bytes_s=write_s,
                     gpu_util=gpu_util, gpu_memory_mb=gpu_mem,
                     extra={"pids": len(pids), "gpus": list(job.gpus), "truncated": False})

    # -- the node and its GPUs -----------------------------------------------------------

    def _node(self, now: float, name: str) -> Usage:
        times = psutil.cpu_times()
        total = sum(times)
        idle = times.idle + getattr(times, "iowait", 0.0)
        mem = psutil.virtual_memory()
        try:
            disk = psutil.disk_io_counters()
        except (RuntimeError, OSError):
            disk = None
        read, write = (disk.read_bytes, disk.write_bytes) if disk else (None, None)
        prev, self._prev_node = self._prev_node, (now, total, idle, read, write)
        cores = psutil.cpu_count() or 1
        if prev is None:
            busy = (total - idle) / total * cores if total else 0.0  # since boot
            read_s = write_s = None
        else:
            span = max(now - prev[0], 1e-3)
            ticks = max(total - prev[1], 1e-9)
            busy = max(0.0, (ticks - (idle - prev[2])) / ticks) * cores
            read_s, write_s = _rate(read, prev[3], span), _rate(write, prev[4], span)
        return Usage("node", name, now, None, cpu=round(busy, 4),
                     memory_mb=round((mem.total - mem.available) / MB, 2),
                     read_bytes_s=read_s, write_bytes_s=write_s,
                     extra={"cores": cores, "memory_total_mb": mem.total / MB})

    def _gpus(self, now: float, nodes: list[str], jobs: list[_Job]) -> dict[str, Usage]:
        if not nodes:
            return {}
        holder = {g: j.id for j in jobs for g in j.gpus}
        out = {}
        for g in self._nvml.read():
            subject = f"{nodes[0]}/{g['index']}"
            out[subject] = Usage(
                "gpu", subject, now, None, gpu_util=g["util"], gpu_memory_mb=g["used_mb"],
                extra={"node": nodes[0], "index": g["index"], "name": g["name"],
                       "memory_mb": g["total_mb"], "job": holder.get(g["index"]),
                       "processes": g["processes"]})
        return out


class Nvml:
    """NVIDIA's management library, loaded on first use; :meth:`read` answers [] for
    good when the library, the driver or a GPU is missing."""

    def __init__(self):
        self._nv = None
        self._handles: list = []
        self._broken = False

    def read(self) -> list[dict]:
        """Each GPU: index, name, util (0..1 or None), used_mb, total_mb, processes
        (pid -> bytes of GPU memory)."""
        if self._broken:
            return []
        if self._nv is None and not self._open():
            return []
        nv, out = self._nv, []
        for index, (h, name) in enumerate(self._handles):
            try:
                mem = nv.nvmlDeviceGetMemoryInfo(h)
            except Exception:  # noqa: BLE001 - a GPU fallen off the bus: skip it
                continue
            try:
                util = nv.nvmlDeviceGetUtilizationRates(h).gpu / 100
            except Exception:  # noqa: BLE001 - not supported on this device
                util = None
            procs: dict[int, int] = {}
            for getter in ("nvmlDeviceGetComputeRunningProcesses",
                           "nvmlDeviceGetGraphicsRunningProcesses"):
                try:
                    for p in getattr(nv, getter)(h):
                        procs[p.pid] = procs.get(p.pid, 0) + (p.usedGpuMemory or 0)
                except Exception:  # noqa: BLE001 - no per-process view (e.g. MIG, containers)
                    pass
            out.append({"index": index, "name": name, "util": util, "used_mb": mem.used / MB,
                        "total_mb": mem.total / MB, "processes": procs})
        return out

    def _open(self) -> bool:
        try:
            import pynvml as nv

            nv.nvmlInit()
            handles = []
            for i in range(nv.nvmlDeviceGetCount()):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                name = nv.nvmlDeviceGetName(h)
                handles.append((h, name.decode() if isinstance(name, bytes) else name))
        except Exception:  # noqa: BLE001 - ImportError, NVMLError (no driver), OSError
            self._broken = True
            return False
        self._nv, self._handles = nv, handles
        if not handles:
            self._broken = True
        return bool(handles)

    def close(self) -> None:
        if self._nv is not None:
            try:
                self._nv.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass
            self._nv, self._handles = None, []


def _rate(value: float | None, before: float | None, span: float) -> float | None:
    if value is None or before is None:
        return None
    return round(max(0.0, value - before) / span, 1)


def _parents() -> dict[int, int]:
    """The parent of every process: on Linux one read of each ``/proc/<pid>/stat``
    (psutil's own table would read each twice and build an object per process);
    elsewhere psutil's process table."""
    if not os.path.isdir("/proc/self"):
        return {p.pid: p.info["ppid"] for p in psutil.process_iter(["ppid"])
                if p.info.get("ppid") is not None}
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
            # "pid (command) state ppid ...": the command may hold spaces and parentheses
            out[int(name)] = int(data[data.rfind(b")") + 2:].split(maxsplit=2)[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


class _Table:
    """Which processes descend from which, built once per round, with psutil objects
    kept between rounds for the processes of jobs (so each is created once)."""

    def __init__(self, cache: dict[int, psutil.Process]):
        parents = _parents()
        self.children: dict[int, list[int]] = {}
        for pid, ppid in parents.items():
            self.children.setdefault(ppid, []).append(pid)
        for gone in set(cache) - set(parents):
            del cache[gone]
        self.alive, self.cache = parents, cache

    def tree(self, root: int, started: float = 0.0) -> tuple[list[psutil.Process], bool]:
        """The process ``root`` and its descendants, at most ``MAX_TREE`` of them (the
        second value says whether some were left out: the use shown is then a lower
        bound). ``started``: the root's create time as the executor recorded it; a
        different one means the pid now belongs to another process (nothing measured)."""
        if root not in self.alive:
            return [], False
        out, todo, seen = [], [root], {root}
        while todo:
            if len(out) >= MAX_TREE:
                return out, True
            pid = todo.pop()
            proc = self.cache.get(pid)
            if proc is None:
                try:
                    proc = psutil.Process(pid)
                except psutil.Error:
                    continue
                self.cache[pid] = proc
            if pid == root and started and abs(_created(proc) - started) >= 0.01:
                self.cache.pop(pid, None)  # pid reused: not the job's process
                return [], False
            out.append(proc)
            for child in self.children.get(pid, ()):
                if child not in seen:
                    seen.add(child)
                    todo.append(child)
        return out, False

    def trim(self) -> None:
        """Keep at most ``MAX_CACHED`` process objects (the oldest go first)."""
        extra = len(self.cache) - MAX_CACHED
        for pid in list(self.cache)[:max(0, extra)]:
            del self.cache[pid]


def _created(proc: psutil.Process) -> float:
    try:
        return proc.create_time()
    except psutil.Error:
        return 0.0
