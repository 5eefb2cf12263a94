"""Planning: the whole graph is checked before any job starts. Each problem is one 422
naming the step and the field: an unknown program, step, input, output or parameter; an
input of the wrong type; a ``when`` the expression language refuses; ``${item}`` outside a
``map``; a cycle. The plan is the steps in an order where each comes after what it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import Any

from llmos.errors import Forbidden, InvalidRequest
from llmos.pipelines import expr
from llmos.kernel import programs
from llmos.pipelines.spec import REF, PipelineSpec, Ref, StepSpec, refs_in, substitute
from llmos.pipelines.steps import Kind, ProgramKind, kind_of

ANY = ("any", "value")


@dataclass
class PlannedStep:
    name: str
    spec: StepSpec
    kind: Kind
    needs: list[str] = field(default_factory=list)  # steps it waits for
    reads: set[str] = field(default_factory=set)  # those whose outputs it reads
    outputs: dict[str, str] = field(default_factory=dict)  # name -> type
    mapped: bool = False
    when: expr.Expr | None = None


@dataclass
class Plan:
    name: str
    params: dict
    steps: dict[str, PlannedStep]
    order: list[str]

    def to_dict(self) -> dict:
        return {"name": self.name, "params": self.params,
                "steps": [{"name": n, "program": self.steps[n].spec.program,
                           "needs": self.steps[n].needs, "map": self.steps[n].mapped,
                           "control": self.steps[n].kind.control,
                           "outputs": self.steps[n].outputs} for n in self.order]}


def plan(spec: PipelineSpec, params: dict, read_roots=None) -> Plan:
    """The checked plan of ``spec`` for a run with these (filled) parameters.
    ``read_roots``: the folders the submitter's program files may lie in (kernel/programs)."""
    steps = {name: PlannedStep(name, s, kind_of(s.program), mapped=s.map is not None)
             for name, s in spec.steps.items()}
    for p in steps.values():
        p.outputs = p.kind.outputs_of(p.spec)
    for p in steps.values():
        try:
            _check_step(p, steps, params)
            if isinstance(p.kind, ProgramKind):  # the names it takes; values come later
                names = {**p.spec.params, **{k: None for k in p.spec.inputs}}
                programs.check(p.spec.program, names, read_roots)
        except programs.ProgramOutsideRoots as e:
            raise Forbidden(f"step {p.name}: {e}") from None
        except programs.ProgramError as e:
            raise InvalidRequest(f"step {p.name}: program: {e}") from None
        except ValueError as e:
            raise InvalidRequest(f"step {p.name}: {e}") from None
    try:
        order = list(TopologicalSorter({n: p.needs for n, p in steps.items()}).static_order())
    except CycleError as e:
        cycle = " -> ".join(reversed(e.args[1]))
        raise InvalidRequest(f"steps: a cycle: {cycle}") from None
    return Plan(spec.name, params, steps, order)


def _check_step(p: PlannedStep, steps: dict[str, PlannedStep], params: dict) -> None:
    s, needs = p.spec, set(s_ for s_ in p.spec.after)
    for name in s.after:
        if name not in steps or name == p.name:
            raise ValueError(f"after: unknown step {name!r}")
    item_type = None
    if s.map is not None:
        item_type = _map_type(s.map, steps, params, needs)
    for where, value in (("inputs", s.inputs), ("params", s.params)):
        for ref in refs_in_checked(value, where):
            _check_ref(ref, where, steps, params, item_type, needs, p.name)
    # inputs: known names, required ones present, types
    expected = p.kind.inputs_of(s)
    for key, value in s.inputs.items():
        if key not in expected:
            raise ValueError(f"inputs.{key}: unknown input of {p.kind.name or s.program} "
                             f"(its inputs: {', '.join(expected) or 'none'})")
        got = _type_of(value, steps, item_type)
        want = expected[key]
        if want not in ANY and got not in ANY and got != want:
            raise ValueError(f"inputs.{key}: expects a {want}, but {value!r} is a {got}")
    for key in p.kind.required:
        if key not in s.inputs:
            raise ValueError(f"inputs.{key}: required by {p.kind.name}")
    # parameters: the names now; the values too when no step output is left in them
    concrete = substitute(s.params, lambda r: params[r.path[1]] if r.root == "params" else r)
    complete = not any(isinstance(v, Ref) for v in _leaves(concrete))
    p.kind.check(s, concrete, complete)
    if s.when is not None:
        try:
            p.when = expr.parse(s.when)
        except expr.ExprError as e:
            raise ValueError(f"when: {e}") from None
        for path in p.when.references():
            _check_ref(Ref(tuple(path)), "when", steps, params, item_type, needs, p.name)
    if p.kind.control and s.map is not None:
        raise ValueError(f"map: {p.kind.name} is a control step; it cannot be mapped")
    p.needs = sorted(needs)
    p.reads = needs - set(s.after)


def refs_in_checked(value: Any, where: str) -> list[Ref]:
    try:
        return refs_in(value)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _check_ref(ref: Ref, where: str, steps: dict[str, PlannedStep], params: dict,
               item_type: str | None, needs: set[str], me: str) -> None:
    if ref.root == "item":
        if item_type is None:
            raise ValueError(f"{where}: ${{item}} is only defined in a step with map")
        return
    if ref.root == "params":
        if len(ref.path) < 2 or ref.path[1] not in params:
            known = ", ".join(params) or "none"
            raise ValueError(f"{where}: unknown parameter ${{{ref}}} (parameters: {known})")
        return
    if ref.root != "steps":
        raise ValueError(f"{where}: unknown name {ref.root!r} (use params, steps or item)")
    step = ref.step
    if step not in steps:
        raise ValueError(f"{where}: unknown step {step!r} in ${{{ref}}}")
    if step == me:
        raise ValueError(f"{where}: a step cannot read its own outputs (${{{ref}}})")
    if len(ref.path) < 3:
        raise ValueError(f"{where}: ${{{ref}}} names no output of step {step}")
    out = ref.path[2]
    if out not in steps[step].outputs:
        raise ValueError(f"{where}: step {step} has no output {out!r} (its outputs: "
                         f"{', '.join(steps[step].outputs)})")
    needs.add(step)


def _map_type(value: Any, steps: dict[str, PlannedStep], params: dict, needs: set[str]) -> str:
    """The type of one element of a step's ``map``."""
    if isinstance(value, list):
        if not value:
            raise ValueError("map: an empty list")
        return "value"
    refs = refs_in_checked(value, "map") if isinstance(value, str) else []
    if len(refs) != 1 or not _whole(value):
        raise ValueError("map: a list, or one reference to a list (${params.NAME} or "
                         "${steps.STEP.OUTPUT} of a mapped step)")
    ref = refs[0]
    _check_ref(ref, "map", steps, params, None, needs, "")
    if ref.root == "params":
        if not isinstance(params[ref.path[1]], list):
            raise ValueError(f"map: ${{{ref}}} is not a list")
        return "value"
    source = steps[ref.step]
    if not source.mapped:
        return "value"  # a list its program returned: checked when the step starts
    return source.outputs[ref.path[2]]


def _type_of(value: Any, steps: dict[str, PlannedStep], item_type: str | None) -> str:
    if isinstance(value, str):
        refs = refs_in(value)
        if len(refs) == 1 and _whole(value):
            ref = refs[0]
            if ref.root == "item":
                return item_type if len(ref.path) == 1 else "value"
            if ref.root == "steps":
                source = steps[ref.step]
                kind = source.outputs.get(ref.path[2], "value") if len(ref.path) == 3 else "value"
                return f"list of {kind}" if source.mapped and kind not in ANY else kind
            return "value"
        return "value"  # a literal name (minilm, minilm@champion) is looked up at run time
    if isinstance(value, (dict, list)):
        return "value"
    return type(value).__name__


def _whole(value: Any) -> bool:
    """Whether ``value`` is exactly one reference (it keeps the referenced value's type)."""
    return isinstance(value, str) and REF.fullmatch(value.strip()) is not None


def _leaves(value: Any):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value
