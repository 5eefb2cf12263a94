"""The example pipeline, in YAML and in Python, is one pipeline, and it plans."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from llmos.pipelines.plan import plan
from llmos.pipelines.spec import fill_params, load

EXAMPLES = Path(__file__).parents[2] / "examples" / "pipelines"


def test_the_python_example_is_the_yaml_example():
    spec = importlib.util.spec_from_file_location("classifier", EXAMPLES / "classifier.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.pipeline().to_dict() == yaml.safe_load((EXAMPLES / "classifier.yaml")
                                                         .read_text())


def test_the_yaml_example_plans_in_order():
    sp = load((EXAMPLES / "classifier.yaml").read_text())
    p = plan(sp, fill_params(sp, {"corpus": "/data/topics.jsonl"}))
    assert p.order == ["ingest", "train", "evaluate", "promote", "rollout"]
    assert p.steps["rollout"].needs == ["promote", "train"]
    assert [n for n in p.order if p.steps[n].kind.control] == ["promote", "rollout"]
