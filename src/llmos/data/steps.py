"""What a recipe step is: one class, registered by name, that carries its own parameters.

A step class names itself (``name``), says in which phase it runs (``phase``: per-document
cleaning and filters, then deduplication, then annotations) and declares its parameters as a
nested pydantic model ``Params`` (a step without parameters declares none and gets an empty
one). The recipe parser finds step classes by name in the ``data_steps`` kind of
:mod:`llmos.extensions` (the ``llmos.data_steps`` entry points, built-ins among them) and
validates a step's parameters with its ``Params``; the pipeline builds the step from them
(``params.build()``). So each step is defined once, where it is implemented.

This module owns the base classes only; the steps live in ``clean``, ``filters``, ``dedup``
and ``annotate``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

PHASES = ("document", "dedup", "annotate")


class StepParams(BaseModel):
    """A step's parameters as a recipe gives them (validated, frozen)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    step: ClassVar[str] = ""
    phase: ClassVar[str] = "document"
    step_class: ClassVar[type[Step] | None] = None

    def build(self) -> Any:
        """The step itself, ready to run."""
        assert self.step_class is not None, "parameters of an abstract step"
        return self.step_class(self)


class Step:
    """Base of every recipe step. Subclasses set ``name`` (and ``phase``), may nest a
    ``Params`` model, and are built from an instance of it."""

    name: ClassVar[str]
    phase: ClassVar[str] = "document"
    removes: ClassVar[bool] = False  # filters: counted under "removed", not "changed"
    once: ClassVar[bool] = False  # may appear at most once in a recipe
    # Steps that must come earlier in the recipe: {step name: why}.
    requires: ClassVar[dict[str, str]] = {}
    Params: ClassVar[type[StepParams]] = StepParams

    def __init__(self, params: StepParams):
        self.params = params

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            return  # an intermediate base class (filters' _Filter)
        if cls.phase not in PHASES:
            raise TypeError(f"step {cls.name!r}: phase {cls.phase!r} is not one of {PHASES}")
        params = cls.__dict__.get("Params")
        if params is None:  # no parameters: an empty model of its own
            params = type(f"{cls.__name__}Params", (StepParams,),
                          {"__doc__": cls.__doc__, "__module__": cls.__module__,
                           "__qualname__": f"{cls.__qualname__}.Params"})
        params.step, params.phase, params.step_class = cls.name, cls.phase, cls
        cls.Params = params

    @classmethod
    def writes(cls, params: StepParams) -> set[str]:
        """The columns this step adds to every row (annotations)."""
        return set()
