"""Which files on the llmos host a principal may have read for it (dataset ingest, model
import): system administrators any; everyone else only inside ``LLMOS_INGEST_ROOTS``.

Paths are compared after resolving symbolic links and '..', so neither can climb out of
an allowed folder; a source outside every root is refused before anything is listed, so
the answer does not reveal whether it exists.
"""

from __future__ import annotations

import glob
from pathlib import Path

from llmos.errors import Forbidden
from llmos.security.rbac import Principal


def unrestricted(who: Principal) -> bool:
    return who.is_admin and who.team is None and who.job_id is None


def check_sources(who: Principal, sources: list[str], roots: list[Path]) -> None:
    """Refuse any source (file, folder or glob) that does not lie inside a root."""
    if unrestricted(who):
        return
    for src in sources:
        check_file(who, _static_part(src), roots, shown=src)


def check_file(who: Principal, path: Path, roots: list[Path], shown: str | None = None) -> None:
    if unrestricted(who):
        return
    try:
        real = path.expanduser().resolve()
    except (OSError, RuntimeError, ValueError):  # too long, a link loop, '~nobody', a NUL
        real = None
    if real is None:
        raise Forbidden(f"{shown or path} cannot be resolved on the llmos host")
    if not any(real == root or root in real.parents for root in roots):
        where = ", ".join(str(r) for r in roots) or "none are set"
        raise Forbidden(f"{shown or path} is outside the folders non-administrators may read "
                        f"from ({where}; LLMOS_INGEST_ROOTS)")


def _static_part(src: str) -> Path:
    """The part of a path before its first glob character."""
    try:
        parts = Path(src).expanduser().parts
    except RuntimeError:  # '~nosuchuser': check_file refuses what cannot be resolved
        return Path(src)
    static = []
    for part in parts:
        if glob.has_magic(part):
            break
        static.append(part)
    return Path(*static) if static else Path(".")
