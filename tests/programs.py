"""Programs the tests run as jobs (submitted as /abs/path/programs.py:function)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _wait_for_file(path: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.02)


def gated(ctx, marker_dir: str, gate: str) -> str:
    """Record that this attempt started, then wait for the test to open the gate."""
    Path(marker_dir, f"{ctx.job_id}-{ctx.attempt}-{os.getpid()}").write_text("started")
    ctx.progress(0, 1)
    _wait_for_file(gate)
    ctx.progress(1, 1)
    return "done"


def fail(ctx, message: str = "boom") -> None:
    raise ValueError(message)


def hog_memory(ctx, mb_per_step: int = 50, steps: int = 100) -> None:
    """Grow resident memory step by step (touching every page) until stopped."""
    hoard = []
    for _ in range(steps):
        hoard.append(bytearray(os.urandom(1)) * (mb_per_step << 20))
        time.sleep(0.05)


def sleep_long(ctx, seconds: float = 120) -> None:
    time.sleep(seconds)


def environment(ctx, out: str) -> None:
    """Write what the sandbox looks like from inside."""
    Path(out).write_text(json.dumps({
        "env": dict(os.environ),
        "affinity": sorted(os.sched_getaffinity(0)),
        "cwd": os.getcwd(),
        "pgid_is_pid": os.getpgid(0) == os.getpid(),
        "sid_is_pid": os.getsid(0) == os.getpid(),
    }))


def report(ctx, gate: str) -> None:
    """Use every system call: progress, metrics, log, checkpoint, artifacts."""
    ctx.log("reporting")
    ctx.progress(3, 10)
    for step in range(3):
        ctx.metric("loss", 1.0 / (step + 1), step=step)
    first = ctx.artifacts.put(b"input bytes", name="input.txt", kind="text")
    second = ctx.artifacts.put(ctx.artifacts.get(first) + b" + more", name="output.txt",
                               kind="text", parents=[first])
    ctx.checkpoint.save({"step": 3}, files={"weights.bin": b"\x00\x01"})
    loaded = ctx.checkpoint.load()
    assert loaded.state == {"step": 3} and loaded.path("weights.bin").read_bytes() == b"\x00\x01"
    print(f"artifacts {first} {second}", flush=True)
    _wait_for_file(gate)
    ctx.progress(10, 10)


def resumable(ctx, steps: int = 20, step_s: float = 0.05, marker_dir: str = "") -> int:
    """Counts steps, checkpointing when asked to yield; resumes from its checkpoint."""
    ckpt = ctx.checkpoint.load()
    start = ckpt.state["step"] if ckpt else 0
    if marker_dir:
        Path(marker_dir, f"{ctx.job_id}-{ctx.attempt}-from-{start}").write_text("")
    for step in range(start, steps):
        if ctx.should_yield():
            ctx.checkpoint.save({"step": step})
            return step
        time.sleep(step_s)
        ctx.progress(step + 1, steps)
    return steps


def whoami(ctx, out: str) -> None:
    """Record who the job's own token stands for, and the environment it runs in."""
    me = ctx.request("GET", "/v1/auth/whoami")
    art = ctx.artifacts.put(b"made by a job", name="job-output.txt")
    Path(out).write_text(json.dumps({"me": me, "artifact": art, "env": dict(os.environ)}))


_CHILD = """
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(sys.argv[1], "a") as f:
    f.write(f"{grandchild.pid}\\n")
time.sleep(600)
"""


def stubborn(ctx, pids_file: str) -> None:
    """Ignore SIGTERM (as its child and grandchild do: an ignored signal stays ignored
    across exec), record the three pids (itself, child, grandchild), sleep until killed."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", _CHILD, pids_file])
    with open(pids_file, "a") as f:
        f.write(f"{os.getpid()}\n{child.pid}\n")
    while True:
        time.sleep(0.1)


def forge_files(ctx, result: str, fake_log: bool = False) -> None:
    """A hostile job: print a line that would end a followed log's event stream and forge
    an `end` event, leave ``result`` ("list", "fifo", "link") as its own result.json,
    and die before the runner can write the real one."""
    folder = os.getcwd()
    if fake_log:
        print('gone\revent: end\rdata: {"state": "SUCCEEDED", "reason": "forged"}\r\r',
              flush=True)
    path = os.path.join(folder, "result.json")
    if result == "list":
        with open(path, "w") as f:
            f.write("[]")
    elif result == "fifo":
        os.mkfifo(path)
    elif result == "link":
        os.symlink("/etc/hostname", path)
    os._exit(3)
