"""The local executor: each attempt a sandboxed subprocess on this machine.

Sandbox: its own session and process group, its own working folder
(``LLMOS_HOME/jobs/<id>``), stdout and stderr appended to ``stdout.log`` and
``stderr.log``, CPU affinity to its allocated cores, ``CUDA_VISIBLE_DEVICES`` set to its
GPUs (empty when none), an environment without llmos's secrets, and a memory limit:
a cgroup v2 group with ``memory.max`` where this machine delegates one, else
``RLIMIT_AS`` (not for GPU jobs: CUDA reserves vast address space), and in every case
a resident-memory watchdog run by the daemon (:meth:`memory_used_mb`).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil

from llmos.config import SECRET_ENV_NAMES, SECRET_ENV_PREFIXES
from llmos.kernel.executors._runner import (
    CLAIMED_FILE,
    LAUNCH_FILE,
    MEMORY_EXIT,
    RESULT_FILE,
    REVOKED_FILE,
)
from llmos.kernel.executors.base import Exit, ExitKind, Handle, LaunchPlan

CGROUP_ROOT = Path("/sys/fs/cgroup")


class LocalExecutor:
    name = "local"

    def __init__(self) -> None:
        self._procs: dict[int, subprocess.Popen] = {}
        self._cgroups = _CgroupV2.detect()

    # -- start -------------------------------------------------------------------------

    def launch(self, plan: LaunchPlan) -> Handle:
        """Write the attempt's launch file, then start the runner that claims it. A daemon
        killed between the two leaves an unclaimed launch file, which recovery revokes."""
        alloc = plan.allocation
        cgroup = self._cgroups.create(plan.job_id, alloc.memory_mb) if self._cgroups else None
        self.write_launch(plan, memory_by_cgroup=cgroup is not None)
        folder = plan.workdir
        header = f"--- llmos: attempt {plan.attempt} of job {plan.job_id} at {time.ctime()} ---\n"
        with open(folder / "stdout.log", "a") as out, open(folder / "stderr.log", "a") as err:
            out.write(header)
            err.write(header)
            out.flush()
            err.flush()
            proc = subprocess.Popen(
                [sys.executable, "-m", "llmos.kernel.executors._runner", str(folder)],
                cwd=folder,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=job_environment(alloc.gpus),
                start_new_session=True,
                close_fds=True,
            )
        if cgroup:
            cgroup.add(proc.pid)
        self._procs[plan.job_id] = proc
        return Handle(plan.job_id, plan.attempt, proc.pid, _create_time(proc.pid), folder,
                      alloc.memory_mb, {"cgroup": str(cgroup.path) if cgroup else None})

    @staticmethod
    def write_launch(plan: LaunchPlan, memory_by_cgroup: bool = False) -> None:
        """The first step of a launch: the attempt's folder, without an older attempt's
        result, and its launch file (readable by its owner only: it carries the token)."""
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
            "api_url": plan.api_url,
            "api_token": plan.api_token,
            "api_ca": plan.api_ca,
        }
        _write_private(folder / LAUNCH_FILE, json.dumps(launch))

    def recover(self, job_id: int, attempt: int, workdir: Path, memory_mb: int,
                pid: int | None, pid_started: float | None) -> Handle | Exit | None:
        if pid and pid_started and _same_process(pid, pid_started):
            return Handle(job_id, attempt, pid, pid_started, workdir, memory_mb, {"adopted": True})
        if pid is None:  # bound, but was it started? The files of this attempt say.
            try:  # an unclaimed launch file: revoke it; if that wins, it never ran
                os.rename(workdir / LAUNCH_FILE, workdir / REVOKED_FILE)
                return None
            except FileNotFoundError:
                pass
            found = _find_runner(workdir)
            if found:
                return Handle(job_id, attempt, found[0], found[1], workdir, memory_mb,
                              {"adopted": True})
            if not _claimed(workdir, attempt) and _read_result(workdir, attempt) is None:
                return None  # no launch file, no claim, no result: it never started
        gone = Handle(job_id, attempt, pid or 0, pid_started or 0.0, workdir, memory_mb)
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
        self._reap_group(handle.pid)
        oom = self._cgroups.finish(handle.job_id) if self._cgroups else False
        return _exit_from(handle, code, _read_result(handle.workdir, handle.attempt), oom)

    def memory_used_mb(self, handle: Handle) -> float | None:
        try:
            root = psutil.Process(handle.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
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
        if self._alive(handle):
            _signal_pid(handle.pid, signal.SIGUSR1)

    def terminate(self, handle: Handle) -> None:
        if self._alive(handle):
            _signal_group(handle.pid, signal.SIGTERM)

    def kill(self, handle: Handle) -> None:
        if self._alive(handle):
            _signal_group(handle.pid, signal.SIGKILL)

    def close(self) -> None:
        self._procs.clear()

    def _alive(self, handle: Handle) -> bool:
        proc = self._procs.get(handle.job_id)
        if proc is not None:
            return proc.poll() is None
        return _same_process(handle.pid, handle.pid_started)

    @staticmethod
    def _reap_group(pgid: int) -> None:
        """Nothing a job started may outlive it."""
        _signal_group(pgid, signal.SIGKILL)


def job_environment(gpus: tuple[int, ...]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(SECRET_ENV_PREFIXES) and k not in SECRET_ENV_NAMES
    }
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    env["PYTHONUNBUFFERED"] = "1"
    # glibc reserves 64 MB of address space per thread arena; under RLIMIT_AS that turns
    # multi-threaded programs (torch, tokenizers) into spurious MemoryErrors.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    return env


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (the launch file carries the job's token)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


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


JOB_FILE_MAX = 64 << 10  # a result or claim file is a few hundred bytes


def _job_json(path: Path) -> dict | None:
    """A JSON object from a file in a job's folder, which the job itself can write: a
    link, a FIFO, a huge file or anything but an object reads as nothing (a job must not
    hang or crash the daemon that watches every team's jobs)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > JOB_FILE_MAX:
            return None
        value = json.loads(os.read(fd, JOB_FILE_MAX + 1))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return value if isinstance(value, dict) else None


def _read_result(folder: Path, attempt: int) -> dict | None:
    result = _job_json(folder / RESULT_FILE)
    if result is None or result.get("attempt") != attempt:
        return None
    if result.get("error") is not None:  # becomes the job's reason: text, bounded
        result["error"] = str(result["error"])[:2000]
    return result


def _claimed(folder: Path, attempt: int) -> bool:
    """Whether a runner claimed this attempt's launch file (so the attempt started)."""
    claim = _job_json(folder / CLAIMED_FILE)
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
    """The live runner process of a job folder, found by its command line."""
    target = str(workdir)
    for proc in psutil.process_iter(["pid", "cmdline", "create_time", "status"]):
        cmd = proc.info["cmdline"] or []
        if (len(cmd) >= 2 and cmd[-1] == target and "llmos.kernel.executors._runner" in cmd
                and proc.info["status"] != psutil.STATUS_ZOMBIE):
            return proc.info["pid"], proc.info["create_time"]
    return None


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class _CgroupV2:
    """Per-job memory cgroups under ``/sys/fs/cgroup/llmos``, where the host delegates
    the memory controller to us (cgroup v2, writable). Not used otherwise."""

    def __init__(self, root: Path):
        self.root = root

    @classmethod
    def detect(cls) -> _CgroupV2 | None:
        controllers = CGROUP_ROOT / "cgroup.controllers"
        try:
            if "memory" not in controllers.read_text().split():
                return None
            root = CGROUP_ROOT / "llmos"
            root.mkdir(exist_ok=True)
            (root / "cgroup.subtree_control").write_text("+memory")
            return cls(root)
        except OSError:
            return None

    def create(self, job_id: int, memory_mb: int) -> _JobCgroup | None:
        path = self.root / f"job-{job_id}"
        try:
            path.mkdir(exist_ok=True)
            (path / "memory.max").write_text(str(memory_mb << 20))
            swap = path / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")
            return _JobCgroup(path)
        except OSError:
            return None

    def finish(self, job_id: int) -> bool:
        """Remove the job's cgroup; True when the kernel OOM-killed something in it."""
        path = self.root / f"job-{job_id}"
        oom = False
        try:
            for line in (path / "memory.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    oom = True
            path.rmdir()
        except OSError:
            pass
        return oom


class _JobCgroup:
    def __init__(self, path: Path):
        self.path = path

    def add(self, pid: int) -> None:
        try:
            (self.path / "cgroup.procs").write_text(str(pid))
        except OSError:
            pass
