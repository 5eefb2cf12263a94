"""The first code that runs inside a job's process (``python -m llmos.kernel.executors._runner``).

It claims the attempt's launch file, confines itself (CPU affinity, address-space limit),
builds the job context, imports and calls the program, and writes ``result.json`` so
that even a daemon that was restarted meanwhile learns how the attempt ended.

The files of one attempt, in the job's folder, tell a restarted daemon how far its launch
got: ``launch.json`` (written by the daemon: not started yet) is renamed either to
``launch.claimed.json`` by this runner (started) or to ``launch.revoked.json`` by a
restarted daemon (never to start), and exactly one of the two renames wins; then
``result.json`` (ended). None of them for the attempt: the daemon died before launching.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
import traceback
from pathlib import Path

LAUNCH_FILE = "launch.json"
CLAIMED_FILE = "launch.claimed.json"
REVOKED_FILE = "launch.revoked.json"
RESULT_FILE = "result.json"
MEMORY_EXIT = 137  # what a kernel OOM kill looks like (128 + SIGKILL)


def main(workdir: str) -> int:
    folder = Path(workdir)
    # Claim the launch file atomically: a restarted daemon that found this attempt not yet
    # started revokes it the same way, and exactly one of the two renames wins.
    try:
        os.rename(folder / LAUNCH_FILE, folder / CLAIMED_FILE)
    except FileNotFoundError:
        print("llmos: this launch was revoked before it started", file=sys.stderr)
        return 0
    launch = json.loads((folder / CLAIMED_FILE).read_text())
    attempt = launch["attempt"]
    _confine(launch)

    from llmos.kernel.context import JobContext
    from llmos.kernel.programs import load_program

    ctx = JobContext(launch["job_id"], attempt, folder, launch.get("api_url"),
                     api_token=launch.get("api_token"), api_ca=launch.get("api_ca"),
                     read_roots=launch.get("read_roots") or (),
                     # absent from launch files written before remote checkpoints
                     remote_checkpoints=bool(launch.get("remote_checkpoints")),
                     checkpoint_artifact=launch.get("checkpoint_artifact"))
    signal.signal(signal.SIGUSR1, lambda *_: ctx._request_yield())
    signal.signal(signal.SIGTERM, _on_sigterm(ctx))

    result: dict = {"attempt": attempt}
    code = 0
    try:
        fn = load_program(launch["program"])
        value = fn(ctx, **launch["params"])
        result["status"] = "yielded" if ctx.should_yield() else "succeeded"
        result["return"] = _jsonable(value)
    except MemoryError:
        limit = launch.get("memory_mb")
        result.update(status="failed", kind="memory",
                      error=f"exceeded its memory limit of {limit} MB (MemoryError)")
        code = MEMORY_EXIT
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        result["status"] = "succeeded" if code == 0 else "failed"
        if code:
            result.update(kind="exit", error=f"program called sys.exit({e.code!r})")
    except BaseException as e:  # noqa: BLE001 - the job's own failure, reported not raised
        traceback.print_exc()
        result.update(status="failed", kind="error", error=f"{type(e).__name__}: {e}"[:2000])
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    result["ended"] = time.time()
    tmp = folder / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, folder / RESULT_FILE)
    ctx.close()
    return code


def _confine(launch: dict) -> None:
    try:  # lead a session and process group of its own (in a sandbox, pid 1 leads one)
        os.setsid()
    except OSError:  # already a session leader (started with start_new_session)
        pass
    cores = launch.get("cores")
    if cores:
        os.sched_setaffinity(0, cores)
        # Thread pools (OpenMP, MKL, tokenizers) size themselves from these.
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(var, str(max(1, int(launch.get("cpu", len(cores))))))
    processes = launch.get("max_processes")
    if processes:  # no pids cgroup here: the team user's process count is capped instead
        resource.setrlimit(resource.RLIMIT_NPROC, (int(processes), int(processes)))
    limit_mb = launch.get("address_space_mb")
    if limit_mb:
        limit = int(limit_mb) << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _on_sigterm(ctx):
    def handler(signum, frame):
        ctx._request_yield()
        raise SystemExit(128 + signum)

    return handler


def _jsonable(value):
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)[:1000]
    return value if len(text) <= 64_000 else None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
