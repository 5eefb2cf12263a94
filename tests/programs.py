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
    """Record that this attempt started (in ``marker_dir``, else the job's own folder),
    then wait for the test to open the gate."""
    Path(marker_dir or ctx.workdir, f"{ctx.job_id}-{ctx.attempt}-{os.getpid()}").write_text(
        "started")
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


def escape(ctx, targets: dict) -> None:
    """A hostile job: try every way out of its sandbox that a real attack on llmos used
    (tests/security/test_escape.py), write what each attempt got into ``report.json`` in
    its own folder, then plant links to the daemon's secrets in place of its log and
    event files."""
    import sqlite3

    report = {}

    def attempt(name, fn):
        try:
            got = fn()
        except Exception as e:  # noqa: BLE001 - a refusal is what the test wants
            report[name] = f"blocked: {type(e).__name__}: {e}"[:300]
        else:
            report[name] = f"ESCAPED: {str(got)[:300]}"

    def read(path):
        return Path(path).read_bytes()[:100]

    def nonempty(listing):
        if not listing:
            raise PermissionError("nothing there")
        return listing

    home = Path(targets["home"])
    attempt("read the administrator's credentials", lambda: read(targets["credentials"]))
    attempt("read the encryption keys", lambda: read(targets["keys"]))
    attempt("read the audit key", lambda: read(targets["audit_key"]))
    attempt("list LLMOS_HOME beyond its own folder",
            lambda: nonempty(sorted(set(os.listdir(home)) - {"jobs"})))
    attempt("list other jobs' folders",
            lambda: nonempty(sorted(set(os.listdir(home / "jobs")) - {str(ctx.job_id)})))
    attempt("read another job's launch file (its token)",
            lambda: read(Path(targets["other_job_dir"]) / "launch.claimed.json"))
    attempt("read another job's log", lambda: read(Path(targets["other_job_dir"]) / "stderr.log"))
    attempt("list the stored blobs", lambda: nonempty(os.listdir(home / "artifacts")))

    def write_db():
        db = sqlite3.connect(f"file:{targets['db']}?mode=rw", uri=True)
        db.execute("INSERT INTO users (name, is_admin, disabled, created_at) "
                   "VALUES ('intruder', 1, 0, '2026-01-01')")
        db.commit()
        return "inserted an administrator"

    attempt("write the database", write_db)
    attempt("read the daemon's environment",
            lambda: read(f"/proc/{targets['daemon_pid']}/environ"))
    attempt("read the daemon's memory", lambda: read(f"/proc/{targets['daemon_pid']}/mem"))
    attempt("read pid 1's environment", lambda: read("/proc/1/environ"))
    attempt("see other processes",
            lambda: nonempty([p for p in os.listdir("/proc") if p.isdigit() and int(p) > 64]))
    attempt("signal the daemon", lambda: os.kill(int(targets["daemon_pid"]), signal.SIGTERM))
    attempt("kill another team's job", lambda: os.kill(int(targets["other_job_pid"]),
                                                       signal.SIGKILL))
    attempt("become root", lambda: os.setuid(0))
    attempt("change llmos's own code", lambda: open(targets["source"], "a").write("# pwned\n"))
    attempt("read another team's artifact through the API",
            lambda: ctx.artifacts.get(int(targets["other_artifact"])))
    attempt("mint an administrator's token through the API",
            lambda: ctx.request("POST", "/v1/tokens", json={"name": "x", "scopes": ["admin"]}))
    def local_service():
        import socket

        socket.create_connection(("127.0.0.1", 5432), timeout=5).close()
        return "connected to PostgreSQL on the host"

    attempt("reach a service on the host's loopback", local_service)
    attempt("write into the host's /tmp",
            lambda: Path(targets["host_tmp_file"]).write_text("from a job") and
            "wrote (only the job's own /tmp, unless the host sees it)")
    (Path(ctx.workdir) / "report.json").write_text(json.dumps(report))
    # Links to the secrets where the daemon reads and appends: its logs, its events.
    for name, secret in (("stdout.log", targets["credentials"]), ("stderr.log", targets["keys"]),
                         ("events.jsonl", targets["credentials"])):
        path = Path(ctx.workdir) / name
        path.unlink(missing_ok=True)
        os.symlink(secret, path)
    raise SystemExit(3)  # fail, so that its retry makes the daemon open those files again


def full_context(ctx) -> None:
    """Use every system call from inside the sandbox: log, progress, metrics, artifacts
    (put, get, lineage), a checkpoint; record who it runs as."""
    import pwd

    ctx.log("reporting from the sandbox")
    ctx.progress(1, 2)
    for step in range(3):
        ctx.metric("loss", 1.0 / 2 ** step, step=step)
    first = ctx.artifacts.put(b"input bytes", name="input.txt", kind="text")
    ctx.artifacts.put(ctx.artifacts.get(first) + b" + more", name="output.txt", kind="text",
                      parents=[first])
    ctx.checkpoint.save({"step": 1}, files={"weights.bin": b"\x00\x01"})
    assert ctx.checkpoint.load().path("weights.bin").read_bytes() == b"\x00\x01"
    Path(ctx.workdir, "seen.json").write_text(json.dumps({
        "user": pwd.getpwuid(os.getuid()).pw_name, "uid": os.getuid(),
        "pids": len([p for p in os.listdir("/proc") if p.isdigit()])}))
    ctx.progress(2, 2)


_WORKER = """
import os, sys, time
if os.fork():
    os._exit(0)
os.setsid()  # its own session, then orphaned: out of the job's process group
if os.fork():
    os._exit(0)
hoard = bytearray(int(sys.argv[1]) << 20)
for i in range(0, len(hoard), 4096):
    hoard[i] = 1
with open(sys.argv[2], "a") as f:
    f.write("ready\\n")
time.sleep(600)
"""


def runaway(ctx, workers: int, mb: int, tag: str, then: str = "return") -> None:
    """Start ``workers`` children that double-fork into their own sessions (the way a
    daemon detaches) and hold ``mb`` MB each; wait until they hold it (or 30 s), then
    return — or sleep, to be cancelled. ``tag`` marks their command lines."""
    ready = Path(ctx.workdir, "ready")
    for _ in range(workers):
        subprocess.run([sys.executable, "-c", _WORKER, str(mb), str(ready), tag], check=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ready.exists() and ready.read_text().count("ready") >= workers:
            break
        time.sleep(0.05)
    ctx.progress(1, 1)
    if then == "sleep":
        time.sleep(600)


def fork_many(ctx, count: int) -> None:
    """Start up to ``count`` sleeping processes; report how many could start."""
    started = []
    try:
        for _ in range(count):
            started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
    finally:
        Path(ctx.workdir, "started").write_text(str(len(started)))
    for p in started:
        p.kill()


def own_token(ctx) -> None:
    """Leave this attempt's own API token where the test can find it."""
    launch = json.loads(Path(ctx.workdir, "launch.claimed.json").read_text())
    Path(ctx.workdir, "token").write_text(launch["api_token"])
    ctx.request("GET", "/v1/auth/whoami")


def probe_paths(ctx, paths: list) -> None:
    """Try to read each path; write what each gave into ``probe.json`` in its folder."""
    seen = {}
    for path in paths:
        try:
            p = Path(path)
            seen[path] = sorted(os.listdir(p)) if p.is_dir() else p.read_text()[:200]
        except OSError as e:
            seen[path] = f"blocked: {type(e).__name__}"
    Path(ctx.workdir, "probe.json").write_text(json.dumps(seen))


def poison_reports(ctx) -> None:
    """Reports the store cannot keep and files the daemon cannot parse: JSON nested past
    Python's recursion limit, a step beyond 64 bits, NUL characters, non-finite counters."""
    with open(Path(ctx.workdir, "events.jsonl"), "a") as f:
        f.write("[" * 100_000 + "\n")
    ctx.metric("huge step", 1.0, step=2 ** 70)
    ctx.metric("nul\x00name", 2.0, step=1)
    ctx.progress(1, 2, files="a\x00b", big=2 ** 80, bad=float("nan"))
    ctx.metric("fine", 3.0, step=2)
    time.sleep(1)  # the daemon reads these while the job runs
    Path(ctx.workdir, "result.json").write_text("[" * 20_000)
    os._exit(0)


def accumulate(ctx, steps: int = 40, step_s: float = 0.1, every: int = 5) -> int:
    """A deterministic sum over ``steps`` (of step * step), checkpointed every ``every``
    steps without being asked (a node can die without warning) and when asked to yield;
    resumes from its checkpoint. Reports where each attempt started (metric
    ``started_at_step``) and the sum (metric ``total``)."""
    ckpt = ctx.checkpoint.load()
    step, total = (ckpt.state["step"], ckpt.state["total"]) if ckpt else (0, 0)
    ctx.metric("started_at_step", step, step=ctx.attempt)
    while step < steps:
        if ctx.should_yield():
            ctx.checkpoint.save({"step": step, "total": total})
            return step
        total += step * step
        step += 1
        time.sleep(step_s)
        if step % every == 0:
            ctx.checkpoint.save({"step": step, "total": total})
        ctx.progress(step, steps)
    ctx.metric("total", total)
    return total


def ranked(ctx, fail_rank: int = -1, seconds: float = 300.0) -> int:
    """One rank of a gang: says which (and the gang's GPUs), fails when it is
    ``fail_rank``, else runs ``seconds`` or until asked to yield."""
    rank = int(os.environ.get("RANK", "0"))
    print(f"rank {rank} of {os.environ.get('WORLD_SIZE')}, gpus "
          f"{os.environ.get('LLMOS_GANG_GPUS')}", flush=True)
    if rank == fail_rank:
        raise RuntimeError(f"rank {rank} gives up")
    end = time.monotonic() + seconds
    while time.monotonic() < end and not ctx.should_yield():
        time.sleep(0.1)
    return rank
