"""Files in a job's folder, as the daemon opens them.

A job owns its folder and can put anything there: a link to the daemon's key file in
place of its log, a FIFO in place of its result, a file of gigabytes. The daemon (which
may run as root) reads and appends to those files only through these functions: never
through a link, never anything but a regular file, never more than it asked for.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path


def open_append(path: Path):
    """A job-folder file opened for appending as the daemon: never through a link, never
    anything but a regular file (a FIFO would hang the daemon). Whatever else the job
    left under that name is removed first."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
    for _ in range(2):
        try:
            fd = os.open(path, flags, 0o644)
        except OSError:  # a link (ELOOP), a folder...
            _remove(path)
            continue
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.set_blocking(fd, True)
            return os.fdopen(fd, "a")
        os.close(fd)
        _remove(path)
    raise OSError(f"{path.name} in the job's folder cannot be made a regular file")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def open_read(path: Path):
    """A job-folder file opened for reading as the daemon, by the same rules; None when
    missing or not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


JOB_FILE_MAX = 64 << 10  # a result or claim file is a few hundred bytes


def size_of(path: Path) -> int:
    """The size of a regular file in a job's folder; 0 when missing or not a regular file
    (never following a link the job planted)."""
    f = open_read(path)
    if f is None:
        return 0
    with f:
        return os.fstat(f.fileno()).st_size


def read_json(path: Path) -> dict | None:
    """A JSON object from a file in a job's folder, which the job itself can write: a
    link, a FIFO, a huge file or anything but an object reads as nothing (a job must not
    hang or crash the daemon that watches every team's jobs)."""
    f = open_read(path)
    if f is None:
        return None
    with f:
        try:
            if os.fstat(f.fileno()).st_size > JOB_FILE_MAX:
                return None
            value = json.loads(f.read(JOB_FILE_MAX + 1))
        except (OSError, ValueError, RecursionError):  # '[' * 20000 nests too deep
            return None
    return value if isinstance(value, dict) else None


