"""The `when:` expression language: what it reads, what it computes, what it refuses."""

from __future__ import annotations

import pytest

from llmos.pipelines.expr import ExprError, parse, truthy

ENV = {
    "params": {"lr": 0.001, "names": ["a", "b"], "threshold": 0.8},
    "steps": {
        "evaluate": {"metrics": {"accuracy": 0.91, "loss": 0.2}},
        "promote": {"promoted": True, "margin": 0.0},
        "train": {"outputs": {"model": "m-3", "x y": 4}},
    },
    "item": [3, 4, {"name": "fr"}],
}


@pytest.mark.parametrize(("text", "value"), [
    ("steps.evaluate.metrics.accuracy > params.threshold", True),
    ("steps.promote.promoted and steps.evaluate.metrics.loss < 0.5", True),
    ("not steps.promote.promoted or false", False),
    ("0.5 <= steps.evaluate.metrics.accuracy < 0.95", True),
    ("1 < 2 > 3", False),
    ('steps.train.outputs["x y"] * 2 + 1', 9),
    ('steps.train.outputs["model"] == "m-3"', True),
    ("item[0] + item[-2]", 7),
    ("item[2].name in ['fr', 'de']", True),
    ("'c' not in params.names", True),
    ("'f1' in steps.evaluate.metrics", False),
    ("len(params.names) == 2 and max(item[0], item[1]) == 4", True),
    ("min([5, 2, 9]) - abs(-3)", -1),
    ("round(steps.evaluate.metrics.accuracy, 1)", 0.9),
    ("10 % 4 / 4", 0.5),
    ("-(item[0]) + +1", -2),
    ("'yes' if steps.promote.promoted else 'no'", "yes"),
    ("steps.evaluate.metrics.f1 if 'f1' in steps.evaluate.metrics else 0", 0),
    ("null == None and true == True and false == False", True),
    ("(1, 2) == [1, 2]", True),
    ("steps.promote.margin", 0.0),
])
def test_expressions_evaluate_against_the_env(text: str, value: object) -> None:
    assert parse(text).evaluate(ENV) == value


def test_truthy_takes_text_or_a_parsed_expression() -> None:
    assert truthy("steps.promote.promoted", ENV) is True
    assert truthy(parse("steps.promote.margin"), ENV) is False
    assert truthy("item", ENV) is True


def test_text_is_kept_trimmed() -> None:
    assert parse("  params.lr > 0 \n").text == "params.lr > 0"


def test_references_name_every_path_read() -> None:
    expr = parse('steps.evaluate.metrics.accuracy > params.threshold and '
                 'steps.train.outputs["model"] != null and len(item[0]) > 0 '
                 'and max(params.lr, 1) > 0')
    assert expr.references() == {
        ("steps", "evaluate", "metrics", "accuracy"),
        ("params", "threshold"),
        ("steps", "train", "outputs", "model"),
        ("item",),
        ("params", "lr"),
    }
    assert parse("1 + 2").references() == set()


@pytest.mark.parametrize(("text", "message"), [
    ("steps.evaluate.metrics.f1 > 0.5",
     "when: steps.evaluate.metrics.f1 is not there (metrics: accuracy, loss)"),
    ("stepz.train", "when: stepz is not there (names: item, params, steps)"),
    ("item[7]", "when: item[7] is not there (item has 3 items)"),
    ("params.lr.value", "when: params.lr.value is not there (params.lr is a float)"),
    ('steps.train.outputs["no pe"]',
     'when: steps.train.outputs["no pe"] is not there (outputs: model, x y)'),
    ("'a' < 1", "when: cannot compare str and int (column 1)"),
    ("1 in 5", "when: cannot look for int in int (column 1)"),
    ("'a' * 1000000000", "when: arithmetic needs numbers, not str and int (column 1)"),
    ("params.names + params.names", "arithmetic needs numbers, not list and list"),
    ("true + 1", "arithmetic needs numbers, not bool and int"),
    ("999999999 * 999999999", "when: the result is above 1e15 (column 1)"),
    ("1 / 0", "when: division by zero (column 1)"),
    ("5 % 0", "when: division by zero"),
    ("-params.names", "unary minus/plus needs a number, not list"),
    ("round(3, -1000000000000000)", "when: round() takes at most 15 digits"),
    ("len(5)", "when: len(): object of type 'int' has no len()"),
    ("max()", "when: max():"),
])
def test_evaluation_errors_name_the_path_or_the_problem(text: str, message: str) -> None:
    with pytest.raises(ExprError) as caught:
        parse(text).evaluate(ENV)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


ATTACKS = [
    ("__import__('os')", "calls to '__import__' are not allowed (column 1)"),
    ("().__class__.__bases__", "names starting with '_' ('__bases__') are not allowed"),
    ("item.__class__", "names starting with '_' ('__class__') are not allowed (column 1)"),
    ("__builtins__", "names starting with '_' ('__builtins__') are not allowed"),
    ("open('/etc/passwd')", "calls to 'open' are not allowed (column 1)"),
    ("len(open('/etc/passwd'))", "calls to 'open' are not allowed (column 5)"),
    ("steps.train.outputs.get('x')", "calls to 'steps.train.outputs.get' are not allowed"),
    ("eval('1')", "calls to 'eval' are not allowed"),
    ("'a'*10**9", "'**' operators are not allowed (column 5)"),
    ("9**9**9", "'**' operators are not allowed (column 1)"),
    ("'a' * 100000000000000000", "numbers above 1e15 are not allowed (column 7)"),
    ("1e308 * 1e308", "numbers above 1e15 are not allowed"),
    ("lambda: 1", "lambdas are not allowed (column 1)"),
    ("[x for x in item]", "comprehensions are not allowed (column 1)"),
    ("(x for x in item)", "comprehensions are not allowed"),
    ("{k: 1 for k in item}", "comprehensions are not allowed"),
    ("f'{params.lr}'", "f-strings are not allowed (column 1)"),
    ("(x := 1)", "assignments (':=') are not allowed (column 2)"),
    ("max(*item)", "starred arguments ('*') are not allowed (column 5)"),
    ("max(item, key=len)", "keyword arguments (in max()) are not allowed"),
    ("{'a': 1}", "dict literals are not allowed"),
    ("{1, 2}", "set literals are not allowed"),
    ("item[0:2]", "subscripts other than a constant key or index are not allowed"),
    ("item[params.lr]", "subscripts other than a constant key or index are not allowed"),
    ("item[-'a']", "subscripts other than a constant key or index are not allowed"),
    ("item[0]()", "calls to 'item[0]' are not allowed"),
    ("params is None", "'is' comparisons (use ==) are not allowed"),
    ("7 // 2", "'//' operators are not allowed"),
    ("~1", "Invert operators are not allowed"),
    ("1 << 40", "LShift operators are not allowed"),
    ("b'x'", "bytes literals are not allowed"),
    ("1j", "complex literals are not allowed"),
    ("...", "ellipsis literals are not allowed"),
    ("await item", "Await expressions are not allowed"),
    ("import os", "not a valid expression: invalid syntax"),
    ("params.lr; 1", "not a valid expression"),
    ("1 +", "not a valid expression"),
    ("", "must be a non-empty string of at most 1000 characters"),
    ("   ", "must be a non-empty string"),
    ("a" * 1001, "must be a non-empty string of at most 1000 characters"),
    ("-" * 900 + "1", "the expression nests deeper than 50 levels"),
    ("not " * 60 + "true", "the expression nests deeper than 50 levels"),
    ("(" * 300 + "1" + ")" * 300, "not a valid expression"),
    ("[" * 60 + "]" * 60, "the expression nests deeper than 50 levels"),
    ("a" + ".b" * 60, "the expression nests deeper than 50 levels"),
    ("\x00", "not a valid expression"),
    ("item[" + "-" * 900 + "1]()", "calls to 'item[-----"),
    ("item" + ".b" * 400 + "()", "calls to 'item.b.b.b"),
    ("steps.train.outputs.get(\n'x')", "calls to 'steps.train.outputs.get' are not allowed"),
]


@pytest.mark.parametrize(("text", "message"), ATTACKS, ids=[a[0][:30] for a in ATTACKS])
def test_attacks_are_refused_when_parsed(text: str, message: str) -> None:
    with pytest.raises(ExprError) as caught:
        parse(text)
    assert message in str(caught.value)
    assert str(caught.value).startswith("when: ")
    assert "\n" not in str(caught.value)


def test_a_non_string_is_refused_and_the_label_names_the_field() -> None:
    with pytest.raises(ExprError, match="must be a non-empty string"):
        parse(42)  # type: ignore[arg-type]
    with pytest.raises(ExprError, match=r"^steps\.rollout\.when: calls to 'open'"):
        parse("open('x')", label="steps.rollout.when")


def test_expr_error_is_a_value_error() -> None:
    assert issubclass(ExprError, ValueError)
