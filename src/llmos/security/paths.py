"""Which files on the llmos host a principal may have read for it (dataset ingest, model
import, a recipe's tokenizer): system administrators any; everyone else only inside
``LLMOS_INGEST_ROOTS``.

The rule is checked twice: by the service that starts the work (so a bad request is
refused before any job exists) and by the program that does it (``data.ingest``,
``models.import``), with the roots its job context received from the kernel — never
from the job's parameters — so a job submitted straight through ``POST /v1/jobs`` is held
to the same folders.

Paths are compared after resolving symbolic links and '..', so neither can climb out of an
allowed folder. A path is checked *before* anything looks at whether it exists, and every
refusal is the same sentence for a path that exists and for one that does not, so a
refusal never tells a caller what lies outside the roots. Globs and folders are expanded
only inside the roots (``llmos.data.readers.expand_sources``): a link met on the way is
checked where it leads, whether or not its target exists.

``roots`` below is a list of resolved folders — the ones the job service grants a
principal (``JobService.read_roots``: the ingest roots, or ``/`` for a system
administrator's own token) — and ``/`` among them, or None, means anywhere.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Sequence

from llmos.errors import Forbidden


ANYWHERE = Path("/")


def refusal(shown: str, roots: Sequence[Path] | None) -> Forbidden:
    """The one answer for a path outside the roots, whether or not it exists."""
    where = ", ".join(str(r) for r in roots or ()) or "none are set"
    return Forbidden(f"{str(shown)[:300]} is outside the folders non-administrators may read "
                     f"from ({where}; LLMOS_INGEST_ROOTS)")


def within(path: str | Path, roots: Sequence[Path] | None, shown: str | None = None) -> Path:
    """``path`` resolved (links, '..', '~'); Forbidden when it lies outside ``roots``.

    Nothing here asks whether the path exists: a missing file outside the roots and an
    existing one are refused alike. Unrestricted callers (``roots`` None) get the path
    resolved as far as it can be."""
    shown = str(path) if shown is None else shown
    if roots is not None and ANYWHERE in roots:
        roots = None
    try:
        real = Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):  # too long, a link loop, '~nobody', a NUL
        if roots is None:
            return Path(path)
        raise refusal(shown, roots) from None
    if roots is not None and not any(real == r or r in real.parents for r in roots):
        raise refusal(shown, roots)
    return real


def check_tree(path: str | Path, roots: Sequence[Path] | None, shown: str | None = None
               ) -> Path:
    """``path`` resolved and checked, and, for a folder, every link inside it checked where
    it leads (a link inside a root may point outside it). Links to folders are not
    followed. Returns the resolved path."""
    real = within(path, roots, shown)
    if roots is None or ANYWHERE in roots or not real.is_dir():
        return real
    for folder, dirs, files in os.walk(real, followlinks=False):
        for name in dirs + files:
            entry = Path(folder) / name
            if entry.is_symlink():
                within(entry, roots)
    return real


def check_sources(roots: Sequence[Path] | None, sources: list[str]) -> None:
    """Refuse any source (file, folder or glob) whose fixed part does not lie inside a
    root (what a glob matches is checked as it is expanded)."""
    for src in sources:
        within(static_part(src), roots, shown=src)


def static_part(src: str) -> Path:
    """The part of a path before its first glob character."""
    try:
        parts = Path(src).expanduser().parts
    except RuntimeError:  # '~nosuchuser': within() refuses what cannot be resolved
        return Path(src)
    static = []
    for part in parts:
        if glob.has_magic(part):
            break
        static.append(part)
    return Path(*static) if static else Path(".")
