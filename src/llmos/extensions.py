"""Extension points: the one registry through which llmos finds things by name.

Each kind of extension is an entry-point group; built-ins register in llmos's own
``pyproject.toml`` exactly as third-party packages register in theirs:

=================  =====================  ==============================================
kind               entry-point group      what a name stands for
=================  =====================  ==============================================
``programs``       ``llmos.programs``     a job's function (``module:function``)
``executors``      ``llmos.executors``    an executor class (``local``, ``ray``)
``engines``        ``llmos.engines``      a serving engine class (``torch``, ``encoder``)
``data_steps``     ``llmos.data_steps``   a recipe step class (``normalize``, ``length``)
``model_loaders``  ``llmos.model_loaders`` a model import format (``hf``, ``gguf``)
=================  =====================  ==============================================

Lookup is lazy: listing names and reading a target (``module:attr``) import nothing; only
:meth:`Registry.load` imports the module, once. An unknown name raises
:class:`UnknownExtension`, whose message lists the names there are. Tests and embedding
programs may :meth:`Registry.register` an object (or a ``module:attr`` path) in-process;
it is found before an entry point of the same name.

This module sits at the bottom of the import graph: it imports the standard library only.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points
from threading import Lock
from typing import Any

log = logging.getLogger("llmos.extensions")


class UnknownExtension(LookupError):
    """No extension of this kind has that name (the message lists those that exist)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ExtensionConflict(ValueError):
    """A name registered twice."""


class Registry:
    """The extensions of one kind, by name: entry points of ``group`` plus in-process ones."""

    def __init__(self, group: str, noun: str):
        self.group = group
        self.noun = noun  # "serving engine": used in messages
        self._local: dict[str, Any] = {}
        self._points: dict[str, str] | None = None
        self._loaded: dict[str, Any] = {}
        self._lock = Lock()

    def _entry_points(self) -> dict[str, str]:
        """Entry points by name. llmos's own come first and cannot be shadowed: another
        package's entry point with a built-in's name is left out (whichever of two
        packages was found first would otherwise win), and so is a second one of a name."""
        if self._points is None:
            found = sorted(entry_points(group=self.group),
                           key=lambda ep: ep.dist is None or ep.dist.name != "llmos")
            points: dict[str, str] = {}
            for ep in found:
                if ep.name in points:
                    log.warning("%s %r of %s ignored: the name is taken", self.noun, ep.name,
                                ep.dist.name if ep.dist else "an unknown package")
                    continue
                points[ep.name] = ep.value
            self._points = points
        return self._points

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(set(self._local) | set(self._entry_points()))

    def __contains__(self, name: object) -> bool:
        return name in self._local or name in self._entry_points()

    def target(self, name: str) -> Any:
        """What ``name`` stands for without importing it: a ``module:attr`` string (or the
        object registered in-process). Raises UnknownExtension."""
        if name in self._local:
            return self._local[name]
        points = self._entry_points()
        if name in points:
            return points[name]
        raise UnknownExtension(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        names = self.names()
        known = ", ".join(names) if names else (
            f"none (no {self.group!r} entry points: is llmos installed? pip install -e .)")
        return f"unknown {self.noun} {name!r}; available: {known}"

    def load(self, name: str) -> Any:
        """The object ``name`` stands for, imported on first use."""
        target = self.target(name)
        if not isinstance(target, str):
            return target
        with self._lock:
            if name not in self._loaded:
                module, _, attr = target.partition(":")
                obj = importlib.import_module(module)
                for part in attr.split(".") if attr else ():
                    obj = getattr(obj, part)
                self._loaded[name] = obj
            return self._loaded[name]

    def register(self, name: str, obj: Any, *, replace: bool = False) -> None:
        """Register ``obj`` (or a lazy ``"module:attr"`` path) as ``name`` in this process."""
        if not replace and name in self:
            raise ExtensionConflict(f"a {self.noun} named {name!r} is registered already")
        with self._lock:
            self._local[name] = obj
            self._loaded.pop(name, None)

    def unregister(self, name: str) -> None:
        """Forget an in-process registration (entry points stay)."""
        with self._lock:
            self._local.pop(name, None)
            self._loaded.pop(name, None)

    def refresh(self) -> None:
        """Read the entry points again (after installing a package in this process)."""
        with self._lock:
            self._points = None
            self._loaded.clear()


programs = Registry("llmos.programs", "program")
executors = Registry("llmos.executors", "executor")
engines = Registry("llmos.engines", "serving engine")
data_steps = Registry("llmos.data_steps", "step")
model_loaders = Registry("llmos.model_loaders", "model format")

KINDS: dict[str, Registry] = {"programs": programs, "executors": executors, "engines": engines,
                              "data_steps": data_steps, "model_loaders": model_loaders}
