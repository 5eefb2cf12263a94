"""The safe expression language of a pipeline step's `when:`.

This module owns parsing, checking and evaluating those expressions. Text is parsed with
`ast.parse(mode="eval")` and every node is checked against a short whitelist: literals,
names and dotted paths (`steps.evaluate.metrics.accuracy`), constant subscripts,
comparisons, `and or not`, arithmetic on numbers, `a if c else b` and a few calls
(`len min max abs round`). Nothing is ever compiled or run as Python. Numbers stay at or
below 1e15 in size, so no expression can build a huge value. It knows nothing of
pipelines beyond the names it is handed in `env`.
"""

from __future__ import annotations

import ast
import json
import operator
from dataclasses import dataclass, field
from typing import Any

MAX_CHARS = 1000
MAX_DEPTH = 50
MAX_NUMBER = 1e15
CALLS = {"len": len, "min": min, "max": max, "abs": abs, "round": round}
CONSTANTS = {"true": True, "false": False, "null": None}
COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
           ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
           ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
              ast.Div: operator.truediv, ast.Mod: operator.mod}
ALLOWED = (ast.Constant, ast.Name, ast.Attribute, ast.Subscript, ast.Call, ast.Compare,
           ast.BoolOp, ast.UnaryOp, ast.BinOp, ast.IfExp, ast.List, ast.Tuple, ast.Load,
           ast.And, ast.Or, ast.Not, ast.USub, ast.UAdd, *COMPARE, *ARITHMETIC)
REFUSED = {ast.Lambda: "lambdas", ast.ListComp: "comprehensions",
           ast.SetComp: "comprehensions", ast.DictComp: "comprehensions",
           ast.GeneratorExp: "comprehensions", ast.JoinedStr: "f-strings",
           ast.NamedExpr: "assignments (':=')", ast.Starred: "starred arguments ('*')",
           ast.Dict: "dict literals", ast.Set: "set literals", ast.Slice: "slices",
           ast.Pow: "'**' operators", ast.FloorDiv: "'//' operators",
           ast.Is: "'is' comparisons (use ==)", ast.IsNot: "'is not' comparisons (use !=)"}


class ExprError(ValueError):
    """An expression that is not allowed, or that cannot be evaluated against its env."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _column(node: ast.AST) -> str:
    return f"column {getattr(node, 'col_offset', 0) + 1}"


def _path(node: ast.AST) -> tuple[str | int, ...] | None:
    """The static path of a name/attribute/subscript chain, or None for anything else."""
    if isinstance(node, ast.Name):
        return (node.id,)
    if not isinstance(node, (ast.Attribute, ast.Subscript)):
        return None
    base = _path(node.value)
    part = node.attr if isinstance(node, ast.Attribute) else ast.literal_eval(node.slice)
    return None if base is None else base + (part,)


def _spell(path: tuple[str | int, ...]) -> str:
    return str(path[0]) + "".join(f".{part}" if isinstance(part, str) and part.isidentifier()
                                  else f"[{json.dumps(part)}]" for part in path[1:])


def _check(node: ast.AST, parent: ast.AST, depth: int, src: str, label: str) -> None:
    """Refuse any node outside the whitelist, naming it and its column."""
    def refuse(what: str) -> ExprError:
        where = node if hasattr(node, "col_offset") else parent
        return ExprError(f"{label}: {what} are not allowed ({_column(where)})")

    if depth > MAX_DEPTH:
        raise ExprError(f"{label}: the expression nests deeper than {MAX_DEPTH} levels")
    if not isinstance(node, ALLOWED):
        name = type(node).__name__
        raise refuse(REFUSED.get(type(node), f"{name} operators" if isinstance(
            node, (ast.operator, ast.unaryop, ast.cmpop)) else f"{name} expressions"))
    children = list(ast.iter_child_nodes(node))
    if isinstance(node, ast.Constant):
        value = node.value
        if not (value is None or isinstance(value, (bool, str)) or _is_number(value)):
            raise refuse(f"{type(value).__name__} literals")
        if _is_number(value) and abs(value) > MAX_NUMBER:
            raise refuse("numbers above 1e15")
    elif isinstance(node, (ast.Name, ast.Attribute)):
        name = node.id if isinstance(node, ast.Name) else node.attr
        if name.startswith("_"):
            raise refuse(f"names starting with '_' ({name!r})")
    elif isinstance(node, ast.Subscript):
        key, kinds = node.slice, (str, int)
        if isinstance(key, ast.UnaryOp) and isinstance(key.op, ast.USub):
            key, kinds = key.operand, (int,)
        if not (isinstance(key, ast.Constant) and type(key.value) in kinds):
            raise refuse("subscripts other than a constant key or index")
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in CALLS:
            called = " ".join((ast.get_source_segment(src, node.func) or "?").split())
            raise refuse(f"calls to {called[:60]!r}")
        if node.keywords:
            raise refuse(f"keyword arguments (in {node.func.id}())")
        children = list(node.args)
    for child in children:
        _check(child, node, depth + 1, src, label)


@dataclass(frozen=True)
class Expr:
    """A checked expression: its text, the paths it reads, and its value against an env."""

    text: str
    label: str
    _tree: ast.expr = field(repr=False, compare=False)

    def references(self) -> set[tuple[str, ...]]:
        """Each dotted path read, as far as its string keys go: ('steps', 'train', 'model')."""
        found: set[tuple[str, ...]] = set()
        todo: list[ast.AST] = [self._tree]
        while todo:
            node = todo.pop()
            path = _path(node)
            if path is None:
                todo.extend(node.args if isinstance(node, ast.Call) else ast.iter_child_nodes(node))
            elif path[1:] or path[0] not in CONSTANTS:
                cut = next((i for i, part in enumerate(path) if not isinstance(part, str)), None)
                found.add(path[:cut])  # type: ignore[arg-type]
        return found

    def evaluate(self, env: dict[str, Any]) -> Any:
        return _Evaluator(env, self.label).value(self._tree)


@dataclass
class _Evaluator:
    env: dict[str, Any]
    label: str

    def fail(self, message: str) -> ExprError:
        return ExprError(f"{self.label}: {message}")

    def value(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.Name, ast.Attribute, ast.Subscript)):
            return self.lookup(node)
        if isinstance(node, ast.BoolOp):
            for child in node.values:
                result = self.value(child)
                if bool(result) == isinstance(node.op, ast.Or):
                    break
            return result
        if isinstance(node, ast.IfExp):
            return self.value(node.body if self.value(node.test) else node.orelse)
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self.value(child) for child in node.elts]
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.UnaryOp):
            operand = self.value(node.operand)
            if isinstance(node.op, ast.Not):
                return not operand
            if not _is_number(operand):
                raise self.fail(f"unary minus/plus needs a number, not {type(operand).__name__}")
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp):
            return self.arithmetic(node)
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        return self.call(node.func.id, [self.value(arg) for arg in node.args])

    def lookup(self, node: ast.AST) -> Any:
        path = _path(node)
        assert path is not None
        if len(path) == 1 and path[0] in CONSTANTS:
            return CONSTANTS[path[0]]  # type: ignore[index]
        current: Any = self.env
        for i, part in enumerate(path):
            where = _spell(path[: i + 1])
            if isinstance(current, dict) and part in current:
                current = current[part]
            elif isinstance(current, (list, tuple, str)) and type(part) is int and (
                    -len(current) <= part < len(current)):
                current = current[part]
            elif isinstance(current, dict):
                keys = ", ".join(sorted(map(str, current))[:20]) or "nothing"
                raise self.fail(f"{where} is not there ({path[i - 1] if i else 'names'}: {keys})")
            else:
                held = f"has {len(current)} items" if isinstance(current, (list, tuple, str)) \
                    else f"is a {type(current).__name__}"
                raise self.fail(f"{where} is not there ({_spell(path[:i])} {held})")
        return current

    def compare(self, node: ast.Compare) -> bool:
        left = self.value(node.left)
        for op, right_node in zip(node.ops, node.comparators):
            right = self.value(right_node)
            try:
                if not COMPARE[type(op)](left, right):
                    return False
            except TypeError:
                how = "look for {} in {}" if type(op) in (ast.In, ast.NotIn) else \
                    "compare {} and {}"
                kinds = how.format(type(left).__name__, type(right).__name__)
                raise self.fail(f"cannot {kinds} ({_column(node)})") from None
            left = right
        return True

    def arithmetic(self, node: ast.BinOp) -> Any:
        left, right = self.value(node.left), self.value(node.right)
        if not (_is_number(left) and _is_number(right)):
            raise self.fail(f"arithmetic needs numbers, not {type(left).__name__} and "
                            f"{type(right).__name__} ({_column(node)})")
        try:
            result = ARITHMETIC[type(node.op)](left, right)
        except ZeroDivisionError:
            raise self.fail(f"division by zero ({_column(node)})") from None
        if abs(result) > MAX_NUMBER:
            raise self.fail(f"the result is above 1e15 ({_column(node)})")
        return result

    def call(self, name: str, args: list[Any]) -> Any:
        if name == "round" and len(args) == 2 and not (type(args[1]) is int and abs(args[1]) <= 15):
            raise self.fail("round() takes at most 15 digits")
        try:
            return CALLS[name](*args)
        except (TypeError, ValueError, OverflowError) as err:
            raise self.fail(f"{name}(): {err}") from None


def parse(text: str, label: str = "when") -> Expr:
    """Check `text` and return its Expr; raise ExprError naming what is not allowed."""
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_CHARS:
        raise ExprError(f"{label}: must be a non-empty string of at most {MAX_CHARS} characters")
    text = text.strip()
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError as err:
        where = f" (column {err.offset})" if err.offset else ""
        raise ExprError(f"{label}: not a valid expression: {err.msg}{where}") from None
    except (RecursionError, MemoryError, ValueError):
        raise ExprError(f"{label}: not a valid expression (too deep or malformed)") from None
    _check(tree, tree, 1, text, label)
    return Expr(text, label, tree)


def truthy(expr: Expr | str, env: dict[str, Any]) -> bool:
    """Whether the expression holds in `env`; a str is parsed first."""
    parsed = parse(expr) if isinstance(expr, str) else expr
    return bool(parsed.evaluate(env))
