"""Programs: what a job runs, and how a name becomes a function.

A program is one of
- ``package.module:function``, importable in the job's environment;
- ``/path/to/file.py:function``;
- a registered name: the ``programs`` kind of :mod:`llmos.extensions` (the
  ``llmos.programs`` entry-point group, where the built-ins register too).

The daemon checks a program *without running any of its code*: it finds the module's
source through the import system's finders and reads it with :mod:`ast`. The job process
itself imports it (:func:`load_program`).

A program file is a file on the llmos host, so it is held to the folders its submitter may
have read (``read_roots``: the ingest roots for non-administrators): a path outside them is
refused *before* the daemon looks at it, with one answer whether it exists, is a folder, or
holds a syntax error — so submitting programs is no way to learn what lies outside.
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from llmos import extensions


class ProgramError(ValueError):
    """The program cannot be found, or does not accept the given parameters."""


class ProgramOutsideRoots(ProgramError):
    """A program file outside the folders its submitter may read (a 403, not a 422)."""


def resolve(program: str) -> str:
    """The ``module:function`` or ``file.py:function`` a program name stands for."""
    program = program.strip()
    if program not in extensions.programs:
        return program
    target = extensions.programs.target(program)
    if not isinstance(target, str):  # the job process imports it: only a path will do
        raise ProgramError(f"program {program!r} must be registered as 'module:function'")
    return target


@dataclass(frozen=True)
class Signature:
    params: tuple[str, ...]
    required: tuple[str, ...]
    takes_kwargs: bool


def check(program: str, params: dict, read_roots: Sequence[str | Path] | None = None) -> None:
    """Raise ProgramError when the program cannot be found or its params do not fit.
    ``read_roots``: the folders a program file may lie in ("/" or None: anywhere)."""
    target = resolve(program)
    if ":" not in target:
        raise ProgramError(
            f"unknown program {program!r}: use module:function, path/to/file.py:function, "
            f"or one of {', '.join(extensions.programs.names())}"
        )
    where, _, func = target.rpartition(":")
    if not func.isidentifier():
        raise ProgramError(f"program {program!r}: {func!r} is not a function name")
    source = _source_of(where, program, read_roots)
    if source is None:  # compiled extension: exists, cannot be read
        return
    sig = _signature(source, func, program)
    if sig is None:
        return  # defined dynamically (an assignment): checked when the job starts
    _check_params(sig, params, program)


def _source_of(where: str, program: str, read_roots: Sequence[str | Path] | None
               ) -> str | None:
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_absolute():
            raise ProgramError(f"program {program!r}: the file path must be absolute")
        path = _within(path, program, read_roots)
        if not path.is_file():
            raise ProgramError(f"program {program!r}: no such file {where}")
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise ProgramError(f"program {program!r}: cannot read {where}: "
                               f"{e.strerror or e}") from None
    spec = find_spec(where)
    if spec is None:
        raise ProgramError(f"program {program!r}: no module named {where!r}")
    if spec.origin and spec.origin.endswith(".py"):
        return Path(spec.origin).read_text(encoding="utf-8", errors="replace")
    return None


def _within(path: Path, program: str, read_roots: Sequence[str | Path] | None) -> Path:
    """``path`` resolved, when it lies inside ``read_roots``; else the one refusal (the
    same sentence as ``llmos.security.paths`` gives for data files)."""
    roots = None if read_roots is None else [Path(r) for r in read_roots]
    if roots is None or Path("/") in roots:
        return path
    try:
        real = path.resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL
        real = None
    if real is None or not any(real == r or r in real.parents for r in roots):
        where = ", ".join(str(r) for r in roots) or "none are set"
        raise ProgramOutsideRoots(
            f"program {program[:300]!r}: {str(path)[:300]} is outside the folders "
            f"non-administrators may read from ({where}; LLMOS_INGEST_ROOTS)")
    return real


def find_spec(dotted: str):
    """Find a module's spec without importing it or its parent packages."""
    if not all(part.isidentifier() for part in dotted.split(".")):
        return None
    if dotted in sys.modules:
        return getattr(sys.modules[dotted], "__spec__", None)
    path = None
    spec = None
    for i, part in enumerate(dotted.split(".")):
        name = ".".join(dotted.split(".")[: i + 1])
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        path = spec.submodule_search_locations
        if path is None and i < dotted.count("."):
            return None  # a module, not a package, in the middle of the name
    return spec


def _signature(source: str, func: str, program: str) -> Signature | None:
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ProgramError(f"program {program!r}: syntax error on line {e.lineno}: {e.msg}")
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == func:
            args = node.args
            positional = [a.arg for a in args.posonlyargs + args.args]
            if not positional and not args.vararg:
                raise ProgramError(
                    f"program {program!r}: {func}() must take the job context as its "
                    "first argument"
                )
            named = positional[1:] + [a.arg for a in args.kwonlyargs]
            pos_defaults = len(args.defaults)
            required_pos = positional[1 : len(positional) - pos_defaults] if pos_defaults else positional[1:]
            required_kw = [a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is None]
            return Signature(tuple(named), tuple(required_pos + required_kw), args.kwarg is not None)
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.ImportFrom, ast.Import)):
            targets = _bound_names(node)
            if func in targets:
                return None
    raise ProgramError(f"program {program!r}: no function {func!r} in it")


def _bound_names(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.Assign):
        return {t.id for t in node.targets if isinstance(t, ast.Name)}
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return {node.target.id}
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in node.names}
    return set()


def _check_params(sig: Signature, params: dict, program: str) -> None:
    missing = [p for p in sig.required if p not in params]
    if missing:
        raise ProgramError(f"program {program!r} needs the parameter(s): {', '.join(missing)}")
    if not sig.takes_kwargs:
        unknown = sorted(set(params) - set(sig.params))
        if unknown:
            accepted = ", ".join(sig.params) or "none"
            raise ProgramError(
                f"program {program!r} takes no parameter(s) {', '.join(unknown)} "
                f"(it accepts: {accepted})"
            )


def load_program(program: str) -> Callable:
    """Import and return the program's function (called in the job process only)."""
    target = resolve(program)
    where, _, func = target.rpartition(":")
    if where.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(where).stem, where)
        if spec is None or spec.loader is None:
            raise ProgramError(f"cannot load {where}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        sys.path.insert(0, str(Path(where).parent))
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ProgramError(f"program {program!r}: {func!r} is not a function")
    return fn
