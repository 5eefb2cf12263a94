"""The llmos agent on one node of a Ray cluster: it runs that node's attempts.

The agent is plain Python (Ray only hosts it: ``_ray.NodeAgentActor``). It runs each
attempt exactly as the local executor does on a single machine — the same
:class:`~llmos.kernel.executors.local.LocalExecutor`, so the same sandbox, limits,
pinning and job files — in a node-local home (``<tmp>/llmos-node-<id>``, mode 0700),
never the daemon's ``LLMOS_HOME``: the node holds no key file, no database, no token but
each job's own. What crosses to the daemon is plain data: a launch plan in, a reference
out; on each poll, how the attempt ended (or not yet) and the bytes its log and event
files grew by since the offsets the daemon already has, which the daemon appends to its
own copy of the job's folder.

Two things keep a node honest. Jobs die with the agent (``die_with_parent``; launched
from one thread that lives as long as the agent, since the kernel's parent-death signal
follows the thread that forked): a node whose agent is gone runs nothing no daemon sees.
(bubblewrap arms that signal in its sandbox's first process a moment after starting it:
an agent killed within that moment leaves the sandbox behind, so every agent sweeps such
orphans away, at start and every few seconds — :func:`sweep_orphans`.)
And sandboxed jobs without network reach the API the way local ones do, through
``<home>/run/api.sock``, which the agent forwards to the daemon's TCP address.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from llmos.config import Settings
from llmos.kernel.executors.base import Exit, Handle, LaunchPlan
from llmos.kernel.executors.local import LocalExecutor
from llmos.kernel.executors.sandbox import LISTENING_PROGRAMS
from llmos.kernel.jobfiles import open_read, size_of
from llmos.kernel.resources import Allocation

# The job files the daemon mirrors as they grow (reports and logs; the result comes with
# the exit).
MIRRORED = ("stdout.log", "stderr.log", "events.jsonl")
CHUNK_MAX = 1 << 20  # bytes of one file per poll: a chatty job cannot flood one call
# Settings of the daemon's that shape how a job runs; nothing else crosses.
# alerts_file: masked in the node's jobs too (an agent may run on the daemon's machine)
AGENT_SETTINGS = ("sandbox", "job_network", "job_env", "job_max_processes", "alerts_file")
_EXITS_KEPT = 4096
SWEEP_S = 5.0
AGENT_PROCESS = "ray::NodeAgentActor"  # the name Ray gives the agent's process


def _own_home(home: Path) -> None:
    """Make the node home, or accept it only when it is a real folder of the agent's own
    user: a folder someone else made first at this predictable path (in /tmp) would give
    them every job's launch file and token."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(home)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise RuntimeError(f"refusing node home {home}: not a folder owned by this agent's "
                           "user (remove it, or set another)")
    os.chmod(home, 0o700, follow_symlinks=False)


def default_home(node_id: str) -> Path:
    return Path(tempfile.gettempdir()) / f"llmos-node-{node_id[:16]}"


def agent_settings(home: Path, config: dict) -> Settings:
    """The node's settings: the daemon's job settings, this node's home, and no secret
    (no key file, credentials or token; a database path that does not exist). Built
    without reading the node's environment."""
    fields = {k: config[k] for k in AGENT_SETTINGS if k in config}
    return Settings.model_construct(
        home=home, database_url=f"sqlite:///{home / 'no-database' / 'none.db'}", **fields)


class NodeAgent:
    def __init__(self, node_id: str, config: dict) -> None:
        self.node_id = node_id
        self.home = Path(config.get("home") or default_home(node_id))
        _own_home(self.home)
        self.local = LocalExecutor(agent_settings(self.home, config), die_with_parent=True)
        self._real_cores = sorted(os.sched_getaffinity(0))
        # One thread starts every job and lives as long as the agent (see the docstring).
        self._launcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmos-launch")
        self._exits: OrderedDict[tuple[int, int], dict] = OrderedDict()
        self._lock = threading.Lock()
        self._forwarder: ApiForwarder | None = None
        self._abandoned: set[tuple[int, int]] = set()  # launches the daemon gave up on
        sweep_orphans()
        threading.Thread(target=_sweep_forever, name="llmos-sweep", daemon=True).start()

    # -- start -------------------------------------------------------------------------

    def launch(self, plan: dict) -> dict:
        """Start an attempt (a :class:`LaunchPlan` as a dict); its reference, with the
        sizes its mirrored files had before it started (the daemon's offsets)."""
        p = self._plan(plan)
        self._refuse_unsafe(p)
        self._serve_api(p.api_url)
        before = {name: size_of(p.workdir / name) for name in MIRRORED}
        handle = self._launcher.submit(self._launch_unless_abandoned, p).result()
        node = p.allocation.node
        return {**handle.ref, "node": node, "node_id": self.node_id, "offsets": before,
                "where": f"process {handle.pid} on node {node}"}

    def _launch_unless_abandoned(self, p: LaunchPlan) -> Handle:
        """On the launcher thread: start the attempt, unless the daemon gave up on this
        launch while it waited in line (it may run elsewhere by now); an attempt given up
        on while it started is killed at once."""
        key = (p.job_id, p.attempt)
        with self._lock:
            if key in self._abandoned:
                raise RuntimeError(f"the launch of job {p.job_id} was abandoned")
        handle = self.local.launch(p)
        with self._lock:
            abandoned = key in self._abandoned
        if abandoned:
            self.local.kill(handle)
            raise RuntimeError(f"the launch of job {p.job_id} was abandoned")
        return handle

    def _refuse_unsafe(self, p: LaunchPlan) -> None:
        """Never start a job less isolated than on a single machine: not without a sandbox
        when isolation is required, and never with the host's network only because this
        node cannot forward the API to it (the network reaches the cluster's Ray)."""
        sandbox = self.local.sandbox
        if p.require_isolation and not sandbox.isolated:
            raise RuntimeError(f"this node cannot isolate jobs ({sandbox.reason}); "
                               "LLMOS_REQUIRE_ISOLATION refuses to run them here")
        wants_socket = (sandbox.isolated and self.local.settings.job_network == "none"
                        and p.program not in LISTENING_PROGRAMS)
        if wants_socket and p.api_url and urlsplit(p.api_url).scheme != "http":
            raise RuntimeError("a job on a Ray node reaches the API through the node's "
                               "forwarded socket, which needs a plain-http advertised URL "
                               f"(not {p.api_url!r}); put TLS in front of the nodes' network "
                               "instead, or set LLMOS_JOB_NETWORK=host")

    def _plan(self, plan: dict) -> LaunchPlan:
        alloc = Allocation.from_json(plan["allocation"])
        fields = {k: v for k, v in plan.items() if k not in ("allocation", "workdir")}
        fields["read_roots"] = tuple(fields.get("read_roots") or ())
        return LaunchPlan(**fields, allocation=replace(alloc, cores=self._cores(alloc.cores)),
                          workdir=self.workdir(int(plan["job_id"])))

    def _cores(self, cores: dict[int, int]) -> dict[int, int]:
        """The allocation's core indices on the cores this agent may use: a Ray node may
        declare more CPUs than its machine has (several nodes on one machine), and pinning
        to a core that does not exist would fail the job."""
        real = self._real_cores
        mapped: dict[int, int] = {}
        for core, milli in cores.items():
            target = core if core in real else real[core % len(real)]
            mapped[target] = mapped.get(target, 0) + milli
        return mapped

    def workdir(self, job_id: int) -> Path:
        return self.home / "jobs" / str(job_id)

    def _serve_api(self, api_url: str | None) -> None:
        """Forward ``<home>/run/api.sock`` to the daemon's plain-HTTP address, where jobs
        without network look for it. (An https API is not forwarded: such jobs keep the
        host's network and reach it directly.)"""
        url = urlsplit(api_url or "")
        if url.scheme != "http" or not url.hostname:
            return
        target = (url.hostname, url.port or 80)
        with self._lock:
            if self._forwarder is None:
                self._forwarder = ApiForwarder(self.local.settings.api_socket, target)
                self._forwarder.start()
            self._forwarder.target = target

    # -- watch -------------------------------------------------------------------------

    def poll(self, job: dict, offsets: dict[str, int]) -> dict:
        """How the attempt ended (an Exit as a dict; None while it runs), the bytes each
        mirrored file grew by past ``offsets``, and whether more is left to read."""
        key = (int(job["job_id"]), int(job["attempt"]))
        with self._lock:
            ended = self._exits.get(key)
        if ended is None:
            exit_ = self.local.poll(self._handle(job))
            if exit_ is not None:  # read once: the executor forgets the process now
                ended = exit_dict(exit_)
                with self._lock:
                    self._exits[key] = ended
                    while len(self._exits) > _EXITS_KEPT:
                        self._exits.popitem(last=False)
        chunks, more = self._chunks(key[0], offsets)
        return {"exit": ended, "chunks": chunks, "more": more}

    def _chunks(self, job_id: int, offsets: dict[str, int]) -> tuple[dict[str, bytes], bool]:
        chunks, more = {}, False
        for name in MIRRORED:
            data, left = read_from(self.workdir(job_id) / name, int(offsets.get(name, 0)))
            if data:
                chunks[name] = data
            more = more or left
        return chunks, more

    def fetch(self, job_id: int, name: str, offset: int) -> bytes:
        """Up to 1 MB of one of a job's mirrored files, from ``offset``."""
        if name not in MIRRORED:
            raise ValueError(f"{name} is not a job file the agent serves")
        return read_from(self.workdir(int(job_id)) / name, int(offset))[0]

    def recover(self, job: dict) -> dict:
        """The attempt after a daemon restart: {"state": "running", "ref"}, {"state":
        "ended", "exit"} or {"state": "never"} (it never started, and now never will)."""
        job_id, attempt = int(job["job_id"]), int(job["attempt"])
        ref = job.get("ref")
        found = self.local.recover(job_id, attempt, self.workdir(job_id),
                                   int(job.get("memory_mb") or 0),
                                   {"pid": ref["pid"], "pid_started": ref["pid_started"]}
                                   if ref and ref.get("pid") else None)
        if found is None:
            return {"state": "never"}
        if isinstance(found, Exit):
            return {"state": "ended", "exit": exit_dict(found)}
        return {"state": "running", "ref": found.ref}

    def memory_used_mb(self, job: dict) -> float | None:
        return self.local.memory_used_mb(self._handle(job))

    def free_port(self) -> int:
        """A TCP port free on this node now (a gang led from here meets on it)."""
        return self.local.free_port()

    # -- signal --------------------------------------------------------------------------

    def request_yield(self, job: dict) -> None:
        self.local.request_yield(self._handle(job))

    def terminate(self, job: dict) -> None:
        self.local.terminate(self._handle(job))

    def kill(self, job: dict) -> None:
        self.local.kill(self._handle(job))

    def abandon(self, job: dict) -> dict:
        """A launch the daemon gave up on (its call timed out): revoked if it has not
        started, killed if it has. What it did, in words."""
        with self._lock:
            self._abandoned.add((int(job["job_id"]), int(job["attempt"])))
        found = self.recover({**job, "ref": None})
        if found["state"] == "running":
            self.kill({**job, "ref": found["ref"]})
            return {"done": "killed"}
        return {"done": found["state"]}

    # -- self ----------------------------------------------------------------------------

    def health(self) -> dict:
        import psutil

        sandbox = self.local.sandbox
        memory = psutil.Process().memory_full_info()  # uss: what only this process holds
        return {"node_id": self.node_id, "home": str(self.home), "pid": os.getpid(),
                "rss_mb": memory.rss / (1 << 20), "uss_mb": memory.uss / (1 << 20),
                "sandbox": sandbox.mode, "sandbox_reason": sandbox.reason,
                "cores": self._real_cores}

    def _handle(self, job: dict) -> Handle:
        job_id = int(job["job_id"])
        ref = job.get("ref") or {}
        return Handle(job_id, int(job["attempt"]), self.workdir(job_id),
                      int(job.get("memory_mb") or 0),
                      {"pid": ref.get("pid"), "pid_started": ref.get("pid_started")})


def sweep_orphans() -> list[int]:
    """SIGKILL the job sandboxes on this machine whose agent is gone: bubblewrap
    processes of a node home's job whose parent is neither an agent nor bubblewrap (the
    kernel then ends everything in the sandbox). Their pids."""
    import psutil

    killed = []
    for _ in range(2):  # a sandbox's inner process is orphaned once its outer one dies
        for p in psutil.process_iter(["name", "ppid", "cmdline"]):
            cmd = p.info["cmdline"] or []
            if (p.info["name"] != "bwrap" or "--die-with-parent" not in cmd
                    or not any("/llmos-node-" in a and "/jobs/" in a for a in cmd)):
                continue
            try:
                parent = psutil.Process(p.info["ppid"]).name() if p.info["ppid"] else ""
            except psutil.Error:
                parent = ""
            if parent == "bwrap" or parent.startswith(AGENT_PROCESS):
                continue
            try:
                p.kill()
                killed.append(p.pid)
            except psutil.Error:
                pass
    return killed


def _sweep_forever() -> None:
    while True:
        time.sleep(SWEEP_S)
        try:
            sweep_orphans()
        except Exception:  # noqa: BLE001 - a sweep that failed is tried again
            pass


def exit_dict(e: Exit) -> dict:
    return {"kind": e.kind.value, "exit_code": e.exit_code, "signal": e.signal,
            "message": e.message, "result": e.result}


def read_from(path: Path, offset: int) -> tuple[bytes, bool]:
    """Up to :data:`CHUNK_MAX` bytes of a job's file from ``offset`` (never through a
    link: the job owns its folder), and whether more is left."""
    f = open_read(path)
    if f is None:
        return b"", False
    with f:
        size = os.fstat(f.fileno()).st_size
        if offset >= size:
            return b"", False
        f.seek(offset)
        data = f.read(CHUNK_MAX)
    return data, offset + len(data) < size


class ApiForwarder:
    """A Unix socket whose every connection is relayed to a TCP address (the daemon's
    API): how a job with no network of its own, on a node that is not the daemon's,
    reaches the API. Bytes are relayed as they are; the job's token says who it is."""

    MAX_CONNECTIONS = 256  # a job opening thousands cannot exhaust the agent's threads
    IDLE_S = 300.0  # a connection silent this long is closed

    def __init__(self, path: Path, target: tuple[str, int]) -> None:
        self.path = path
        self.target = target
        self._server: socket.socket | None = None
        self._slots = threading.BoundedSemaphore(self.MAX_CONNECTIONS)

    def start(self) -> None:
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o755)
        self.path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        os.chmod(self.path, 0o666)  # any job's user may connect (bound into its sandbox)
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, name="llmos-api-forward", daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.path.unlink(missing_ok=True)

    def _accept(self) -> None:
        """Accept until closed. A failed accept (out of file descriptors: a job holding
        many connections) waits and goes on: the socket serves every job of the node."""
        while self._server is not None:
            try:
                client, _ = self._server.accept()
            except OSError:
                time.sleep(0.1)
                continue
            if not self._slots.acquire(blocking=False):
                client.close()  # over the cap: refused, as a full server would
                continue
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                return
            for end in (client, upstream):
                end.settimeout(self.IDLE_S)
            back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            back.start()
            _pump(client, upstream)
            back.join()
            client.close()
            upstream.close()
        finally:
            self._slots.release()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy until ``src`` ends, then end ``dst``'s writing side (HTTP keeps the other
    direction open until the answer is read)."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
