"""The local executor: each attempt a sandboxed process tree on this machine.

Sandbox (:mod:`.sandbox`): as root, the job runs as its team's unprivileged system user in
its own mount, PID and IPC namespaces, seeing a read-only system, a private ``/tmp``, its
own folder (``LLMOS_HOME/jobs/<id>``) and the host folders it may read — not the rest of
``LLMOS_HOME``, not other processes. Its stdout and stderr are appended to ``stdout.log``
and ``stderr.log``; it is pinned to its allocated cores; ``CUDA_VISIBLE_DEVICES`` names
its GPUs (empty when none); its environment carries none of llmos's secrets. Limits: a
per-job control group (:mod:`.cgroups`) with its memory limit and a process cap, where
the machine delegates one, else ``RLIMIT_AS`` (not for GPU jobs: CUDA reserves vast
address space) and ``RLIMIT_NPROC``; in every case a resident-memory watchdog run by the
daemon (:meth:`memory_used_mb`) over the whole process tree.

The daemon only ever opens files in a job's folder without following links (the job owns
the folder and could plant one pointing at the daemon's secrets).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psutil

from llmos.config import (JOB_ENV_NAMES, JOB_ENV_PREFIXES, SECRET_ENV_WORDS, Settings,
                          get_settings)
from llmos.kernel.executors import sandbox as sandboxes
from llmos.kernel.executors._runner import (
    CLAIMED_FILE,
    LAUNCH_FILE,
    MEMORY_EXIT,
    RESULT_FILE,
    REVOKED_FILE,
)
from llmos.kernel.executors.base import Exit, ExitKind, Handle, LaunchPlan, gang_environment
from llmos.kernel.executors.cgroups import JobGroups, enter_then_exec
from llmos.kernel.jobfiles import open_append, read_json
from llmos.kernel.resources import NodeInfo, discover_node

RUNNER = "llmos.kernel.executors._runner"


class LocalExecutor:
    name = "local"

    def __init__(self, settings: Settings | None = None, die_with_parent: bool = False) -> None:
        self.settings = settings or get_settings()
        # A node agent (executors/ray) sets it: its jobs end when it ends, so a node whose
        # agent died never runs a job no daemon sees.
        self.die_with_parent = die_with_parent
        self._procs: dict[int, subprocess.Popen] = {}
        self._node: NodeInfo | None = None
        s = self.settings
        self._cgroups = JobGroups.detect(str(s.home_dir))
        secrets = [s.key_path, s.credentials_path, s.tls_key, s.audit_key_path,
                   s.audit_head_path, s.alerts_file]  # alert rules: webhook URLs hold keys
        if s.db_url.startswith("sqlite:///"):
            secrets.append(Path(s.db_url.removeprefix("sqlite:///")))
        self.sandbox = sandboxes.detect(
            s.home_dir, [Path(p).expanduser().absolute() for p in secrets if p],
            enabled=s.sandbox != "off")

    # -- start -------------------------------------------------------------------------

    def launch(self, plan: LaunchPlan) -> Handle:
        """Write the attempt's launch file, then start the runner that claims it. A daemon
        killed between the two leaves an unclaimed launch file, which recovery revokes."""
        alloc = plan.allocation
        identity = self.sandbox.identity(plan.team)
        cgroup = (self._cgroups.create(plan.job_id, alloc.memory_mb,
                                       self.settings.job_max_processes)
                  if self._cgroups else None)
        folder = plan.workdir
        folder.mkdir(parents=True, exist_ok=True)
        if identity is not None:  # the folder is the job's: its team user's alone
            _own(folder, identity.uid, identity.gid)
        header = f"--- llmos: attempt {plan.attempt} of job {plan.job_id} at {time.ctime()} ---\n"
        socket = self._api_socket(plan)
        if socket is not None:  # the job reaches the daemon through its socket only
            plan = replace(plan, api_url=f"unix:{sandboxes.JOB_API_SOCKET}", api_ca=None)
        argv = self.sandbox.wrap([sys.executable, "-m", RUNNER, str(folder)], folder, identity,
                                 *sandboxes.host_paths(plan), api_socket=socket,
                                 die_with_parent=self.die_with_parent)
        cap_processes = identity is not None and not (cgroup and self._cgroups.limits_processes)
        self.write_launch(plan, memory_by_cgroup=cgroup is not None, owner=identity,
                          max_processes=self.settings.job_max_processes if cap_processes
                          else None)
        env = job_environment(alloc.gpus, self.settings.job_env)
        if alloc.gpu_share_mb:  # a share of one GPU: its memory budget (advisory)
            env["LLMOS_GPU_MEMORY_MB"] = str(alloc.gpu_share_mb)
        if plan.gang:  # one rank of a gang over nodes: where its peers meet
            env.update(gang_environment(plan.gang))
        if self.sandbox.isolated:
            env.update(HOME=str(folder), TMPDIR="/tmp")
            if identity is not None:
                env.update(USER=identity.name, LOGNAME=identity.name)
        with open_append(folder / "stdout.log") as out, open_append(folder / "stderr.log") as err:
            out.write(header)
            err.write(header)
            out.flush()
            err.flush()
            try:
                proc = subprocess.Popen(
                    enter_then_exec(cgroup, argv),
                    cwd=folder,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                    # SIGKILL when we end (a sandbox passes it on: --die-with-parent)
                    preexec_fn=_die_with(os.getpid()) if self.die_with_parent else None,
                )
            except BaseException:
                if cgroup:
                    cgroup.remove()
                raise
        self._procs[plan.job_id] = proc
        return Handle(plan.job_id, plan.attempt, folder, alloc.memory_mb,
                      _ref(proc.pid, _create_time(proc.pid)))

    @staticmethod
    def free_port(node: str | None = None) -> int:
        """A TCP port free on this machine now (where a gang's ranks meet, when it leads)."""
        with socket.socket() as s:
            s.bind(("", 0))
            return s.getsockname()[1]

    def nodes(self) -> list[NodeInfo]:
        """This machine, as discovered (LLMOS_CPUS, LLMOS_MEMORY_MB and LLMOS_GPUS narrow
        it; LLMOS_NODE_LABELS labels it)."""
        if self._node is None:
            s = self.settings
            self._node = NodeInfo(discover_node(
                cpus=s.cpus, memory_mb=s.memory_mb, reserved_memory_mb=s.reserved_memory_mb,
                gpus=s.gpus, labels=s.node_label_map), address=socket.gethostname())
        return [self._node]

    def _api_socket(self, plan: LaunchPlan) -> Path | None:
        """The daemon's API socket, when this job gets no network of its own: sandboxed,
        LLMOS_JOB_NETWORK=none, not a program that listens for the daemon, and the daemon
        serves the socket (``llmos up`` does)."""
        if (not self.sandbox.isolated or self.settings.job_network != "none"
                or plan.program in sandboxes.LISTENING_PROGRAMS):
            return None
        socket = self.settings.api_socket
        return socket if socket.is_socket() else None

    @staticmethod
    def write_launch(plan: LaunchPlan, memory_by_cgroup: bool = False, owner=None,
                     max_processes: int | None = None) -> None:
        """The first step of a launch: the attempt's folder, without an older attempt's
        result, and its launch file (readable by the job's user only: it carries the
        job's token)."""
        folder = plan.workdir
        folder.mkdir(parents=True, exist_ok=True)
        (folder / RESULT_FILE).unlink(missing_ok=True)
        alloc = plan.allocation
        launch = {
            "job_id": plan.job_id,
            "attempt": plan.attempt,
            "program": plan.program,
            "params": plan.params,
            "cores": sorted(alloc.cores),
            "cpu": max(1, round(alloc.cpu)),
            "memory_mb": alloc.memory_mb,
            "address_space_mb": None if (memory_by_cgroup or alloc.gpus) else alloc.memory_mb,
            "max_processes": max_processes,
            "read_roots": list(plan.read_roots),
            "api_url": plan.api_url,
            "api_token": plan.api_token,
            "api_ca": plan.api_ca,
            "remote_checkpoints": plan.remote_checkpoints,
            "checkpoint_artifact": plan.checkpoint_artifact,
        }
        _write_private(folder / LAUNCH_FILE, json.dumps(launch), owner)

    def recover(self, job_id: int, attempt: int, workdir: Path, memory_mb: int,
                ref: dict | None) -> Handle | Exit | None:
        pid = (ref or {}).get("pid")
        pid_started = (ref or {}).get("pid_started")
        if pid and pid_started and _same_process(pid, pid_started):
            return Handle(job_id, attempt, workdir, memory_mb, _ref(pid, pid_started))
        if pid is None:  # bound, but was it started? The files of this attempt say.
            try:  # an unclaimed launch file: revoke it; if that wins, it never ran
                os.rename(workdir / LAUNCH_FILE, workdir / REVOKED_FILE)
                return None
            except FileNotFoundError:
                pass
            found = _find_runner(workdir)
            if found:
                return Handle(job_id, attempt, workdir, memory_mb, _ref(*found))
            if not _claimed(workdir, attempt) and _read_result(workdir, attempt) is None:
                return None  # no launch file, no claim, no result: it never started
        gone = Handle(job_id, attempt, workdir, memory_mb, _ref(pid or 0, pid_started or 0.0))
        return _exit_from(gone, None, _read_result(workdir, attempt), False)

    # -- watch ---------------------------------------------------------------------------

    def poll(self, handle: Handle) -> Exit | None:
        proc = self._procs.get(handle.job_id)
        if proc is not None:
            code = proc.poll()
            if code is None:
                return None
            del self._procs[handle.job_id]
        elif _same_process(handle.pid, handle.pid_started):
            return None
        else:
            code = None  # adopted, and gone: its result file is all we can know
        oom = self._reap(handle)
        if code is not None and code > 128 and self.sandbox.isolated:
            code = -(code - 128)  # the sandbox reports a signal death as 128 + signal
        return _exit_from(handle, code, _read_result(handle.workdir, handle.attempt), oom)

    def memory_used_mb(self, handle: Handle) -> float | None:
        procs = _tree(handle.pid)
        if not procs:
            return None
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total / (1 << 20)

    # -- signal --------------------------------------------------------------------------

    def request_yield(self, handle: Handle) -> None:
        """SIGUSR1 to the job's runner, which sets ``ctx.should_yield()``."""
        if self._alive(handle):
            for p in _tree(handle.pid):
                if _is_runner(p, handle.workdir):
                    _signal_pid(p.pid, signal.SIGUSR1)

    def terminate(self, handle: Handle) -> None:
        """SIGTERM to every process of the job (not to the sandbox's own processes: they
        would end it at once, without the grace the job is owed)."""
        if not self._alive(handle):
            return
        if not self.sandbox.isolated:
            _signal_group(handle.pid, signal.SIGTERM)
            return
        for p in _tree(handle.pid):
            if not _is_sandbox(p):
                _signal_pid(p.pid, signal.SIGTERM)

    def kill(self, handle: Handle) -> None:
        if self._alive(handle):
            self._kill_tree(handle)

    def close(self) -> None:
        self._procs.clear()

    def _alive(self, handle: Handle) -> bool:
        proc = self._procs.get(handle.job_id)
        if proc is not None:
            return proc.poll() is None
        return _same_process(handle.pid, handle.pid_started)

    def _kill_tree(self, handle: Handle) -> None:
        """SIGKILL the whole job: the sandbox's first process (the kernel then kills all
        of its PID namespace), its process group, and whatever its control group holds."""
        for p in _tree(handle.pid):
            _signal_pid(p.pid, signal.SIGKILL)
        _signal_group(handle.pid, signal.SIGKILL)
        cgroup = self._cgroups.find(handle.job_id) if self._cgroups else None
        if cgroup:
            cgroup.kill_all()

    def _reap(self, handle: Handle) -> bool:
        """Nothing a job started may outlive it. True when the kernel OOM-killed part of it."""
        self._kill_tree(handle)
        cgroup = self._cgroups.find(handle.job_id) if self._cgroups else None
        if cgroup is None:
            return False
        oom = cgroup.oom_killed()
        cgroup.kill_all()
        cgroup.remove()
        return oom


def _die_with(parent: int):
    """What the child runs before exec so that the kernel SIGKILLs it when the thread
    that started it ends (PR_SET_PDEATHSIG, kept across exec; the agent launches from one
    thread that lives as long as it) — or at once, if the parent is gone already."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def arm() -> None:
        prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(137)

    return arm


def _ref(pid: int, started: float) -> dict:
    """The stored reference to a local attempt: its first process, and that process's
    start time (a later process given the same pid is not the job)."""
    return {"pid": pid, "pid_started": started, "where": f"process {pid}"}


def job_environment(gpus: tuple[int, ...], extra: str = "") -> dict[str, str]:
    """A job's environment: what it needs of the daemon's (``config.JOB_ENV_*``, plus the
    names in ``extra``), never a secret-looking name nor an llmos setting."""
    named = {n.strip() for n in extra.split(",") if n.strip()}
    env = {
        k: v
        for k, v in os.environ.items()
        if (k in JOB_ENV_NAMES or k.startswith(JOB_ENV_PREFIXES) or k in named)
        and not k.startswith("LLMOS_")
        and (k in named or not set(k.upper().split("_")) & set(SECRET_ENV_WORDS))
    }
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    env["PYTHONUNBUFFERED"] = "1"
    # glibc reserves 64 MB of address space per thread arena; under RLIMIT_AS that turns
    # multi-threaded programs (torch, tokenizers) into spurious MemoryErrors.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    return env


def _write_private(path: Path, text: str, owner=None) -> None:
    """Write a file only its owner (the job's user, else the daemon's) can read; a link
    the job planted in its place is replaced, never followed."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        if owner is not None:
            os.fchown(f.fileno(), owner.uid, owner.gid)
        f.write(text)


def _own(folder: Path, uid: int, gid: int) -> None:
    """Give the job's folder (and what earlier attempts, or an llmos without a sandbox,
    left in it) to the job's user. Walked by open folder handles, never by path, and links
    are changed themselves, never followed: nothing the job planted can turn this into a
    chown of something outside its folder."""
    os.chown(folder, uid, gid, follow_symlinks=False)
    os.chmod(folder, 0o700)
    for _, dirs, files, fd in os.fwalk(folder, follow_symlinks=False):
        for name in dirs + files:
            try:
                os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
            except OSError:
                pass


def _exit_from(handle: Handle, code: int | None, result: dict | None, oom: bool) -> Exit:
    status = (result or {}).get("status")
    if oom or (result or {}).get("kind") == "memory":
        message = (result or {}).get("error") or f"exceeded its memory limit of {handle.memory_mb} MB"
        return Exit(ExitKind.MEMORY, code if code and code > 0 else None,
                    -code if code and code < 0 else None, message, result)
    if code is None:  # adopted process, gone
        if status == "succeeded":
            return Exit(ExitKind.SUCCEEDED, 0, None, "", result)
        if status == "yielded":
            return Exit(ExitKind.YIELDED, 0, None, "yielded", result)
        if status == "failed":
            return Exit(ExitKind.FAILED, None, None, result.get("error", "failed"), result)
        return Exit(ExitKind.LOST, None, None,
                    "the process ended while no daemon watched it; its exit status is unknown")
    if code < 0:
        sig = -code
        return Exit(ExitKind.KILLED, None, sig, f"killed by signal {signal.Signals(sig).name}",
                    result)
    if code == 0:
        kind = ExitKind.YIELDED if status == "yielded" else ExitKind.SUCCEEDED
        return Exit(kind, 0, None, "", result)
    if code == MEMORY_EXIT and status is None:
        return Exit(ExitKind.KILLED, code, None, "killed (exit code 137)", result)
    message = (result or {}).get("error") or f"exited with code {code}"
    return Exit(ExitKind.FAILED, code, None, message, result)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and line break


def _read_result(folder: Path, attempt: int) -> dict | None:
    result = read_json(folder / RESULT_FILE)
    if result is None or result.get("attempt") != attempt:
        return None
    if result.get("error") is not None:  # becomes the job's reason: text, bounded, and
        # without control characters (no terminal escape reaches `llmos events` or `top`)
        result["error"] = _CONTROL.sub("", str(result["error"]))[:2000]
    return result


def _claimed(folder: Path, attempt: int) -> bool:
    """Whether a runner claimed this attempt's launch file (so the attempt started)."""
    claim = read_json(folder / CLAIMED_FILE)
    return claim is not None and claim.get("attempt") == attempt


def _create_time(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


def _same_process(pid: int, started: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - started) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _find_runner(workdir: Path) -> tuple[int, float] | None:
    """The live first process of a job folder (its sandbox, or its runner without one),
    found by its command line."""
    target = str(workdir)
    found = None
    for proc in psutil.process_iter(["pid", "cmdline", "create_time", "status", "uids"]):
        cmd = proc.info["cmdline"] or []
        # the daemon's own (a sandbox's first process is; a job could fake the command line)
        if proc.info["uids"] is None or proc.info["uids"].real != os.geteuid():
            continue
        if (target in cmd and RUNNER in cmd and proc.info["status"] != psutil.STATUS_ZOMBIE
                and (found is None or proc.info["create_time"] < found[1])):
            found = (proc.info["pid"], proc.info["create_time"])
    return found


def _tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (in a sandbox: every process of the job, since
    orphans are adopted by the sandbox's first process, not by the host's init)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _is_sandbox(proc: psutil.Process) -> bool:
    try:
        return proc.name() in ("bwrap", "sh")
    except psutil.Error:
        return True


def _is_runner(proc: psutil.Process, workdir: Path) -> bool:
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return False
    return bool(cmd) and cmd[0] == sys.executable and RUNNER in cmd and str(workdir) in cmd


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
