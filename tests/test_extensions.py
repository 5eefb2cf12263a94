"""One registry for every extension point: built-ins come through the same entry points as
third-party packages, names are looked up lazily, unknown names list what exists."""

from __future__ import annotations

from importlib.util import find_spec

import pytest

from llmos import extensions
from llmos.data.steps import Step, StepParams

BUILT_IN = {
    "programs": {"noop", "sleep", "echo", "data.ingest", "models.import", "train.finetune",
                 "train.evaluate", "serve.worker"},
    "executors": {"local"},
    "engines": {"torch", "encoder", "llamacpp"},
    "data_steps": {"html_to_text", "fix_unicode", "normalize", "strip_control",
                   "collapse_whitespace", "mask_pii", "length", "language", "gopher_quality",
                   "gopher_repetition", "regex", "exact_dedup", "near_dedup", "tokenize",
                   "segment", "stopwords"},
    "model_loaders": {"hf", "gguf"},
}


@pytest.mark.parametrize("kind", sorted(BUILT_IN))
def test_built_ins_register_through_entry_points(kind):
    registry = extensions.KINDS[kind]
    assert BUILT_IN[kind] <= set(registry.names())
    for name in BUILT_IN[kind]:
        target = registry.target(name)
        module, _, attr = target.partition(":")
        assert find_spec(module) is not None and attr, target  # no import needed to list


@pytest.mark.parametrize("kind", ["data_steps", "model_loaders"])
def test_each_extension_knows_the_name_it_is_registered_under(kind):
    registry = extensions.KINDS[kind]
    for name in BUILT_IN[kind]:
        assert registry.load(name).name == name


def test_unknown_names_list_what_exists():
    with pytest.raises(extensions.UnknownExtension) as e:
        extensions.executors.load("quantum")
    assert str(e.value) == "unknown executor 'quantum'; available: local, ray"
    empty = extensions.Registry("llmos.nothing_here", "widget")
    with pytest.raises(extensions.UnknownExtension, match="available: none .*pip install -e"):
        empty.target("x")


def test_in_process_registration_is_found_first_and_can_be_undone():
    registry = extensions.Registry("llmos.executors", "executor")
    registry.register("fake", "llmos.kernel.builtin_programs:noop")
    assert registry.names() == ["fake", "local", "ray"]
    assert registry.load("fake").__name__ == "noop"  # a lazy path, imported on use
    with pytest.raises(extensions.ExtensionConflict, match="registered already"):
        registry.register("local", object)
    registry.register("local", object, replace=True)
    assert registry.load("local") is object
    registry.unregister("local")
    assert registry.load("local").__name__ == "LocalExecutor"
    registry.unregister("fake")
    assert "fake" not in registry


class Shout(Step):
    """Upper-case every document (a third-party step, defined once)."""

    name = "shout"

    class Params(StepParams):
        suffix: str = "!"

    def __init__(self, cfg: Params):
        self.suffix = cfg.suffix

    def apply(self, docs, tally):
        for doc in docs:
            doc.text = doc.text.upper() + self.suffix
            tally.add(self.name, "changed")
        return docs


@pytest.fixture
def shout():
    extensions.data_steps.register("shout", Shout)
    yield
    extensions.data_steps.unregister("shout")


def test_a_registered_step_is_checked_by_recipes_and_runs_in_an_ingest(shout, tmp_path):
    from llmos.data import RecipeError, parse_recipe, run_ingest

    with pytest.raises(RecipeError, match=r"step 1 \(shout\): unknown parameter 'x' "
                                          r"\(parameters: suffix\)"):
        parse_recipe({"steps": [{"shout": {"x": 1}}]})
    recipe = parse_recipe({"steps": [{"shout": {"suffix": "?"}}, "exact_dedup"]})
    assert recipe.to_dict()["steps"] == [{"shout": {"suffix": "?"}}, {"exact_dedup": {}}]
    (tmp_path / "a.txt").write_text("hello there")
    result = run_ingest([str(tmp_path / "a.txt")], recipe, tmp_path / "w")
    assert result.stats["changed"] == {"shout": {"changed": 1}}
    assert result.stats["documents"] == 1


def test_another_package_cannot_shadow_a_builtin(tmp_path, monkeypatch):
    """A package installed beside llmos that declares an executor named `local` is left
    out (the built-in stays, whatever the order packages are found in); its other names
    are added."""
    info = tmp_path / "shadow-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shadow\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[llmos.executors]\nlocal = shadow:Stealer\nremote = shadow:Remote\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fresh = extensions.Registry("llmos.executors", "executor")
    assert fresh.target("local") == "llmos.kernel.executors.local:LocalExecutor"
    assert fresh.target("remote") == "shadow:Remote"
