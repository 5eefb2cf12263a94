"""Tuning recipes in process: what they accept, what they refuse (naming the field), the
Optuna objects they make; and where studies are stored (beside llmos's own tables, on
SQLite and on PostgreSQL, without touching llmos's migration history)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from llmos.optimize.tune_recipe import (distributions, grid_space, make_sampler,
                                        parse_tune_recipe, trial_recipe)
from llmos.train.errors import RecipeError

PROGRAM = {"name": "s", "program": "/x/p.py:f", "objective": {"metric": "loss"},
           "space": {"a": {"type": "int", "low": 1, "high": 4},
                     "b": {"type": "categorical", "choices": ["x", "y"]}}}
TRAIN = {"name": "t", "model": "m", "dataset": "d", "output": "o",
         "train": {"task": "sequence_classification", "eval_every": 10},
         "space": {"optimizer.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
                   "batch_size": {"type": "categorical", "choices": [8, 16]},
                   "schedule.warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2,
                                             "step": 0.1}},
         "objective": {"metric": "eval_f1_macro"}, "pruner": {"name": "hyperband"}}


def test_a_training_study_sets_each_value_at_its_path():
    r = parse_tune_recipe(TRAIN)
    assert r.mode == "train"
    out = trial_recipe(r, {"optimizer.lr": 3e-4, "batch_size": 16,
                           "schedule.warmup_ratio": 0.1})
    assert (out["optimizer"]["lr"], out["batch_size"], out["schedule"]["warmup_ratio"],
            out["eval_every"]) == (3e-4, 16, 0.1, 10)
    d = distributions(r)
    assert d["optimizer.lr"].log and d["batch_size"].choices == (8, 16)


def test_yaml_text_and_shorthands():
    r = parse_tune_recipe("name: s\nprogram: /x/p.py:f\nobjective: {metric: loss}\n"
                          "space: {a: {type: float, low: 0, high: 1}}\nsampler: random\n"
                          "pruner: none\n")
    assert (r.sampler.name, r.pruner.name, r.trials, r.parallel) == ("random", "none", 20, 1)


def test_the_grid_sampler_gets_every_value():
    r = parse_tune_recipe({**PROGRAM, "sampler": {"name": "grid"}, "trials": 8})
    assert grid_space(r) == {"a": [1, 2, 3, 4], "b": ["x", "y"]}
    assert type(make_sampler(r)).__name__ == "GridSampler"


@pytest.mark.parametrize("change, message", [
    ({"space": {}}, "space: Dictionary should have at least 1 item"),
    ({"space": {"a": {"type": "int", "low": 1, "high": 1}}}, "space.a: low (1) must be "
     "below high (1)"),
    ({"space": {"a": {"type": "float", "low": 0, "high": 1, "log": True}}},
     "space.a: log needs low > 0"),
    ({"space": {"a": {"type": "int", "low": 0.5, "high": 3}}}, "space.a: low: an int"),
    ({"space": {"a": {"type": "categorical", "choices": [1], "low": 0}}}, "space.a: low"),
    ({"space": {"a": {"type": "uniform", "low": 0, "high": 1}}}, "space.a.type"),
    ({"space": {"a-b": {"type": "float", "low": 0, "high": 1}}}, "space.a-b: a program"),
    ({"params": {"a": 1}}, "space.a: also given in params"),
    ({"sampler": {"name": "grid"}, "trials": 9}, "trials: 9 trials but the grid has 8"),
    ({"sampler": {"name": "random", "n_startup_trials": 3}}, "sampler: n_startup_trials"),
    ({"pruner": {"name": "median", "reduction_factor": 3}}, "pruner: reduction_factor does "
     "not apply to the median pruner"),
    ({"trials": 0}, "trials:"),
    ({"parallel": 0}, "parallel:"),
    ({"model": "m"}, "model: a study runs a program or fine-tunes a model, not both"),
    ({"objective": {"metric": "loss", "direction": "up"}}, "objective.direction"),
    ({"surprise": 1}, "unknown field 'surprise'"),
])
def test_program_recipes_refused_naming_the_field(change, message):
    with pytest.raises(RecipeError) as e:
        parse_tune_recipe({**PROGRAM, **change})
    assert str(e.value).startswith("tune recipe: ") and message in str(e.value), str(e.value)


@pytest.mark.parametrize("change, message", [
    ({"space": {"lr": {"type": "float", "low": 0.1, "high": 0.2}}},
     "space.lr: not a field of the training recipe"),
    ({"space": {"optimizer": {"type": "categorical", "choices": ["sgd"]}}},
     "space.optimizer: not a field"),
    ({"space": {"task": {"type": "categorical", "choices": ["causal_lm"]}}}, "space.task"),
    ({"space": {"batch_size": {"type": "int", "low": 0, "high": 8}}},
     "space.batch_size: the value 0 is refused by the training recipe"),
    ({"train": {"task": "sequence_classification"}}, "pruner: the hyperband pruner needs "
     "intermediate values: set train.eval_every"),
    ({"train": {"task": "summarize"}}, "train: task"),
    ({"objective": {"metric": "eval_perplexity"}}, "objective.metric: 'eval_perplexity'"),
    ({"objective": {"metric": "test_accuracy"}}, "pruner: test_ metrics"),
    ({"output": None}, "missing: output"),
    ({"params": {"x": 1}}, "params: for a program study"),
])
def test_training_recipes_refused_naming_the_field(change, message):
    with pytest.raises(RecipeError) as e:
        parse_tune_recipe({k: v for k, v in {**TRAIN, **change}.items() if v is not None})
    assert message in str(e.value), str(e.value)


def _study_on(url: str, home):
    import optuna

    from llmos.optimize.tune_storage import forget, storage_for
    from llmos.store import open_database

    db = open_database(url)
    try:
        storage = storage_for(db)
        study = optuna.create_study(storage=storage, study_name="probe")
        study.tell(study.ask({"x": distributions(parse_tune_recipe(PROGRAM))["a"]}), 1.0)
        assert len(optuna.load_study(study_name="probe", storage=storage).trials) == 1
        with db.engine.connect() as c:  # llmos's own history is untouched
            assert c.execute(text("SELECT version_num FROM alembic_version")).scalar() \
                >= "0013"
        forget(db)
        db.upgrade()  # and llmos still migrates
        return db
    finally:
        db.close()


def test_studies_live_in_a_sibling_sqlite_file(tmp_path):
    _study_on(f"sqlite:///{tmp_path / 'llmos.db'}", tmp_path)
    assert (tmp_path / "llmos-optuna.db").stat().st_mode & 0o777 == 0o600


@pytest.mark.postgres
def test_studies_live_in_their_own_postgres_schema(tmp_path):
    from pg import fresh_database

    with fresh_database() as url:
        _study_on(url, tmp_path)
        import psycopg

        with psycopg.connect(url) as c:
            tables = {r[0] for r in c.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'optuna'")}
            assert {"studies", "trials", "alembic_version"} <= tables
            public = {r[0] for r in c.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'public'")}
            assert "tune_studies" in public and "trials" not in public
