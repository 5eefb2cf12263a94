"""The job sandbox: what a job's process can see and who it runs as.

A job program is code llmos did not write, run for a member of some team. It must not
reach another team's data or the daemon's secrets (the database, the key file, the
administrator's credentials, other jobs' folders and tokens), whatever it tries. The
sandbox is built with bubblewrap (``bwrap``, Debian's ``bubblewrap``; the tool Flatpak
uses), in one of three modes, chosen once when the executor starts (:func:`detect`):

``users`` (the daemon runs as root)
    each attempt runs as a dedicated unprivileged system user of its team
    (``llmos-t-<team>``, created on first use), in new mount, PID, IPC and UTS
    namespaces: a read-only view of the system; a private ``/tmp``; ``LLMOS_HOME`` and
    the home folders hidden except the job's own folder (read-write, owned by the team
    user) and what Python needs; secrets outside ``LLMOS_HOME`` masked; its own
    ``/proc`` showing its own processes only (not the daemon's ``environ`` or memory,
    not other jobs), so it cannot signal or trace anything but itself.
``namespaces`` (not root, but unprivileged user namespaces work)
    the same view and namespaces, under the daemon's own user id: the files are hidden,
    but the job is the same user as the daemon to the kernel.
``none``
    no bubblewrap or no namespaces: jobs run as plain processes of the daemon's user and
    can read what the daemon can. :attr:`Sandbox.reason` says why, ``llmos up`` prints it,
    and ``LLMOS_REQUIRE_ISOLATION`` decides whether jobs may run at all.

The PID namespace also holds the whole process tree: a child that starts its own session
or double-forks stays under the sandbox's first process, and when the job's main process
ends the kernel kills everything left in the namespace.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import pwd
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

USERS, NAMESPACES, NONE = "users", "namespaces", "none"
# Where a job without a network finds the daemon's API socket, inside its sandbox.
JOB_API_SOCKET = Path("/run/llmos/api.sock")
# Built-in programs that serve the daemon over the loopback network (llmos's own code, no
# user code): they keep the host's network whatever LLMOS_JOB_NETWORK says.
LISTENING_PROGRAMS = frozenset({"serve.worker"})
USER_PREFIX = "llmos-t-"
_TEAM_AS_USER = re.compile(r"^[a-z][a-z0-9_-]{0,22}$")
_useradd_lock = threading.Lock()


@dataclass(frozen=True)
class Identity:
    name: str
    uid: int
    gid: int


@dataclass
class Sandbox:
    mode: str
    reason: str = ""  # why jobs are not (fully) isolated; empty in ``users`` mode
    bwrap: str | None = None
    hidden_files: tuple[Path, ...] = ()  # secrets outside LLMOS_HOME, masked in every job
    home: Path | None = None  # LLMOS_HOME, hidden but for the job's own folder
    _identities: dict[str | None, Identity] = field(default_factory=dict)

    @property
    def isolated(self) -> bool:
        return self.mode != NONE

    # -- identities --------------------------------------------------------------------

    def identity(self, team: str | None) -> Identity | None:
        """The unprivileged user a job of ``team`` runs as (users mode), made on first use."""
        if self.mode != USERS:
            return None
        if team not in self._identities:
            self._identities[team] = team_user(team)
        return self._identities[team]

    # -- the command ---------------------------------------------------------------------

    def wrap(self, argv: list[str], workdir: Path, identity: Identity | None,
             read_paths: list[Path], write_paths: list[Path] = (),
             api_socket: Path | None = None, die_with_parent: bool = False) -> list[str]:
        """``argv`` run inside the sandbox of the job whose folder is ``workdir``;
        ``read_paths`` are host files or folders it may read (bound read-only),
        ``write_paths`` ones it may also write (bound read-write). With ``api_socket`` the
        job gets no network of its own, only that socket, at :data:`JOB_API_SOCKET`.
        With ``die_with_parent`` the whole sandbox is killed when the process (thread)
        that started it ends."""
        if self.mode == NONE:
            return argv
        cmd = [self.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        if self.mode == NAMESPACES:
            cmd += ["--unshare-user"]
        if api_socket is not None:
            cmd += ["--unshare-net"]
        cmd += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                "--new-session", "--hostname", "llmos-job"]
        if die_with_parent:
            cmd += ["--die-with-parent"]
        for dev in sorted(glob.glob("/dev/nvidia*")) + sorted(glob.glob("/dev/dri")):
            cmd += ["--dev-bind", dev, dev]  # GPUs: CUDA_VISIBLE_DEVICES picks the job's
        hidden = _hidden_folders(self.home)
        for folder in hidden:
            shared_tmp = folder in (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"))
            cmd += ["--perms", "1777" if shared_tmp else "0755", "--tmpfs", str(folder)]
        writable = set(_visible(list(write_paths), hidden, everywhere=True))
        readable = set(_visible(read_paths + _runtime_paths(), hidden)) - writable
        bound = _outermost(readable) + _outermost(writable)
        bound.sort(key=lambda p: (len(p.parts), str(p)))  # outer first: inner binds win
        for path in bound:
            mode = "--bind" if path in writable else "--ro-bind"
            cmd += _parents(path, hidden) + [mode, str(path), str(path)]
        # What was bound back may contain LLMOS_HOME or a secret (a read root above
        # LLMOS_HOME): hide them again, last, so no bind can undo it.
        if self.home is not None and self.home.is_dir():
            cmd += _parents(self.home, hidden) + ["--perms", "0755", "--tmpfs", str(self.home)]
        for secret in self.hidden_files:
            if not secret.is_file() or (self.home and self.home in secret.parents):
                continue  # those in LLMOS_HOME went with it
            if (any(h in secret.parents for h in hidden)
                    and not any(b in secret.parents for b in bound)):
                continue  # in an emptied folder, and nothing bound it back
            cmd += _parents(secret, hidden) + ["--ro-bind", "/dev/null", str(secret)]
        if api_socket is not None:  # after /run was emptied
            cmd += ["--perms", "0755", "--dir", str(JOB_API_SOCKET.parent),
                    "--ro-bind", str(api_socket), str(JOB_API_SOCKET)]
        cmd += _parents(workdir, [*hidden, self.home] if self.home else hidden)
        cmd += ["--bind", str(workdir), str(workdir), "--chdir", str(workdir)]
        if identity is not None:
            cmd += ["--", "setpriv", f"--reuid={identity.uid}", f"--regid={identity.gid}",
                    "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
                    "--no-new-privs"]
        return [*cmd, "--", *argv]


def detect(home: Path, hidden_files: list[Path], enabled: bool = True) -> Sandbox:
    """The strongest sandbox this machine allows, tried for real (a container may forbid
    namespaces even to root)."""
    if not enabled:
        return Sandbox(NONE, "the job sandbox is switched off (LLMOS_SANDBOX=off)")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return Sandbox(NONE, "bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
    mode = USERS if os.geteuid() == 0 else NAMESPACES
    if mode == USERS and shutil.which("setpriv") is None:
        return Sandbox(NONE, "setpriv (util-linux) is not installed")
    probe = Sandbox(mode, bwrap=bwrap, home=home)
    try:
        ok = subprocess.run(probe.wrap(["true"], Path("/"), None, []), capture_output=True,
                            timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Sandbox(NONE, f"bubblewrap cannot run here: {e}")
    if ok.returncode != 0:
        why = ok.stderr.decode(errors="replace").strip().splitlines()
        return Sandbox(NONE, "bubblewrap cannot make namespaces here: "
                       + (why[-1] if why else f"exit {ok.returncode}"))
    reason = ("" if mode == USERS else
              "the daemon is not root: jobs are confined to their own view of the files, "
              "but run as the daemon's user")
    return Sandbox(mode, reason, bwrap, tuple(hidden_files), home)


def user_name(team: str | None) -> str:
    """The system user of a team's jobs: ``llmos-t-<team>`` when the name fits a Linux
    user name, else ``llmos-h-<hash>`` (names are at most 32 characters, no dots)."""
    if team is None:
        return "llmos-h-none"
    if _TEAM_AS_USER.match(team):
        return USER_PREFIX + team
    # another prefix: no team name can make it, so no team shares another's user
    return "llmos-h-" + hashlib.sha256(team.encode()).hexdigest()[:16]


def team_user(team: str | None) -> Identity:
    """The team's system user, created (``useradd --system``, no home, no shell) when
    missing. An existing account of that name must be unprivileged."""
    name = user_name(team)
    with _useradd_lock:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            done = subprocess.run(
                ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                 "--shell", "/usr/sbin/nologin", "--user-group",
                 "--comment", f"llmos jobs of team {team or '(none)'}", name],
                capture_output=True, text=True)
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                raise RuntimeError(f"could not create the system user {name}: "
                                   f"{done.stderr.strip() or done.returncode}") from None
    if entry.pw_uid == 0 or entry.pw_gid == 0 or entry.pw_uid == os.geteuid():
        raise RuntimeError(f"the system user {name} exists but is privileged "
                           f"(uid {entry.pw_uid}): it cannot run jobs")
    return Identity(name, entry.pw_uid, entry.pw_gid)


def host_paths(plan) -> tuple[list[Path], list[Path]]:
    """The host paths a job may use, as (read-only, read-write) lists bound into its
    sandbox: its program's folder (``/path/file.py:function``) and its read roots, read
    only; for a job whose roots are the whole host (an unrestricted administrator's), the
    absolute paths named in its params — or, for one that does not exist yet, the folder
    it would be made in — read-write, as far as the files' own permissions let the
    team's user write. LLMOS_HOME and the secret files stay hidden whatever is bound
    (:meth:`Sandbox.wrap`)."""
    ro: list[Path] = []
    rw: list[Path] = []
    where = plan.program.rpartition(":")[0]
    if where.endswith(".py") and where.startswith("/"):
        ro.append(Path(where).parent)
    if "/" in plan.read_roots:
        for p in _absolute_strings(plan.params):
            path = Path(p)
            rw.append(path if path.exists() or path == path.parent else path.parent)
    ro += [Path(r) for r in plan.read_roots if r != "/"]
    return ro, rw


def _absolute_strings(value, found: list[str] | None = None) -> list[str]:
    """Absolute paths in a job's params (nested), cut before any glob character."""
    found = [] if found is None else found
    if isinstance(value, str):
        if value.startswith("/") and "\0" not in value and len(value) < 4096:
            static = []
            for part in Path(value).parts:
                if glob.has_magic(part):
                    break
                static.append(part)
            found.append(str(Path(*static)))
    elif isinstance(value, dict):
        for v in value.values():
            _absolute_strings(v, found)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _absolute_strings(v, found)
    return found


def _hidden_folders(home: Path | None) -> list[Path]:
    """Folders replaced by an empty one in every sandbox: the shared temporary folders
    (the job gets its own), LLMOS_HOME, root's and the daemon user's home folders (keys,
    credentials, shell history)."""
    folders = {Path("/tmp"), Path("/run"), Path("/dev/shm"), Path("/var/tmp"), Path("/root")}
    if home is not None:
        folders.add(home)
    try:
        folders.add(Path(pwd.getpwuid(os.geteuid()).pw_dir))
    except KeyError:
        pass
    folders = {f for f in folders if f.is_dir() and f != Path("/")}
    # a folder inside another hidden one is hidden already; parents first for bwrap
    kept = [f for f in folders if not any(o != f and o in f.parents for o in folders)]
    return sorted(kept, key=lambda p: len(p.parts))


def _parents(path: Path, hidden: list[Path]) -> list[str]:
    """Arguments making the folders between a hidden (emptied) folder and ``path``, open to
    traversal (bwrap would make them 0700 root, closed to the job's user)."""
    under = [h for h in hidden if h in path.parents]
    if not under:
        return []
    top = max(under, key=lambda h: len(h.parts))
    args: list[str] = []
    for parent in reversed(path.parents):
        if top in parent.parents:
            args += ["--perms", "0755", "--dir", str(parent)]
    return args


@functools.lru_cache(maxsize=1)
def _runtime_paths() -> list[Path]:
    """What the job's Python needs to start: its installation, the virtual environment
    and every folder on its import path (an editable install's source included). The
    daemon's own: looked up once."""
    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix),
             Path(sys.executable).parent}
    for entry in sys.path + os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry:
            paths.add(Path(entry))
    return sorted(paths)


def _outermost(paths: set[Path]) -> list[Path]:
    """``paths`` without those inside another of them."""
    return [p for p in paths if not any(o != p and o in p.parents for o in paths)]


def _visible(paths: list[Path], hidden: list[Path], everywhere: bool = False) -> list[Path]:
    """Of ``paths``, resolved and existing, those to bind: the ones under a hidden folder
    (``everywhere``: all of them — the system is read-only otherwise), never a hidden
    folder or one above it."""
    wanted = set()
    for p in paths:
        try:
            real = p.resolve()
        except (OSError, RuntimeError, ValueError):
            continue
        if any(h == real or real in h.parents for h in hidden):
            continue  # binding "/" or "/tmp" back would undo the hiding
        if real.exists() and (everywhere or any(h in real.parents for h in hidden)):
            wanted.add(real)
    return sorted(wanted)
