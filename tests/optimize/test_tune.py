"""Tuning studies through a live daemon: recipes refused before any job, naming the
field; an ASHA study of a cheap program that prunes, finishes and records its best; stop
and resume; other teams see nothing; and a study that survives its daemon being killed
mid-way, with every trial exactly once and no finished trial run again."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from live import LiveDaemon, wait_for
from llmos.sdk import APIError

PROGS = Path(__file__).parent / "tune_programs.py"
FAST = {"LLMOS_TICK_S": "0.05"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A daemon with team red (a developer and a viewer) and team blue (a developer)."""
    home = tmp_path_factory.mktemp("tune") / "home"
    home.mkdir()
    live = LiveDaemon(home, env=FAST).start()
    live.red = live.user("red-dev", team="red")
    live.red_viewer = live.user("red-viewer", team="red", role="viewer")
    live.blue = live.user("blue-dev", team="blue")
    yield live
    for c in (live.red, live.red_viewer, live.blue):
        c.close()
    live.stop()


def curve(name: str, **over) -> dict:
    """A study of tune_programs.curve: 12 trials, 3 at a time, ASHA on ``loss``."""
    return {"name": name, "program": f"{PROGS}:curve", "params": {"steps": 12, "delay": 0.1},
            "space": {"x": {"type": "float", "low": -2.0, "high": 4.0},
                      "y": {"type": "float", "low": -2.0, "high": 2.0}},
            "objective": {"metric": "loss", "direction": "minimize"},
            "trials": 12, "parallel": 3, "sampler": {"name": "tpe", "seed": 0},
            "pruner": {"name": "asha", "min_resource": 1, "reduction_factor": 3},
            "resources": {"cpu": 0.5, "memory_mb": 256}, **over}


def ended(client, name: str, timeout: float = 120) -> dict:
    wait_for(lambda: client.tune.get(name, importances=False)["state"] in
             ("SUCCEEDED", "FAILED", "STOPPED"), timeout=timeout, interval=0.2,
             what=f"study {name} to end")
    return client.tune.get(name)


def cli(live: LiveDaemon, token: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmos.cli.main", *args], capture_output=True,
                          text=True, env=live.cli_env(token), timeout=60)


TRAIN = {"name": "t", "model": "m", "dataset": "d", "output": "o",
         "train": {"task": "sequence_classification", "eval_every": 5},
         "space": {"optimizer.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}},
         "objective": {"metric": "eval_accuracy"}}
BAD = [
    ({"space": {"x": {"type": "float", "low": 2.0, "high": 1.0}}},
     "space.x: low (2) must be below high (1): the range holds no values"),
    ({"space": {"x": {"type": "categorical", "choices": []}}}, "space.x"),
    ({"sampler": {"name": "annealing"}}, "sampler.name"),
    ({"pruner": {"name": "sha"}}, "pruner.name"),
    ({"pruner": {"name": "asha", "n_warmup_steps": 2}},
     "pruner: n_warmup_steps does not apply to the asha pruner"),
    ({"sampler": {"name": "grid"}}, "space.x: the grid sampler needs a step"),
    ({"space": {"x": {"type": "float", "low": 0, "high": 1}, "z": {"type": "int", "low": 0,
                                                                   "high": 3}}},
     "program:"),
    ({"objective": None}, "objective"),
    ({**TRAIN, "program": None, "params": {},
      "space": {"optimizer.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}}},
     "space.optimizer.learning_rate: not a field of the training recipe"),
    ({**TRAIN, "program": None, "params": {},
      "space": {"optimizer.lr": {"type": "float", "low": 1e-5, "high": 50.0}}},
     "space.optimizer.lr: the value 50.0 is refused by the training recipe"),
    ({**TRAIN, "program": None, "params": {}, "objective": {"metric": "accuracy"}},
     "objective.metric: 'accuracy' is not a metric"),
]


def test_bad_recipes_are_refused_before_any_job_naming_the_field(lab):
    before = lab.red.jobs.list(limit=1)["total"]
    for change, message in BAD:
        recipe = {k: v for k, v in {**curve("bad"), **change}.items() if v is not None}
        with pytest.raises(APIError) as e:
            lab.red.tune.start(recipe)
        assert e.value.status == 422, (change, e.value)
        assert message in str(e.value), (change, str(e.value))
        assert "tune recipe" in str(e.value)
    assert lab.red.jobs.list(limit=1)["total"] == before
    assert lab.red.tune.list() == []


def test_the_cli_runs_a_study_to_its_end_or_refuses_a_bad_recipe_in_one_line(lab, tmp_path):
    good = tmp_path / "quick.yaml"
    good.write_text(yaml.safe_dump(curve("quick", trials=2, parallel=2, pruner="none",
                                         params={"steps": 3, "delay": 0.0})))
    done = cli(lab, lab.red.token, "tune", str(good))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "study red/quick: SUCCEEDED" in done.stdout
    assert "2 done, 0 pruned, 0 running, 0 failed (of 2)" in done.stdout
    detached = cli(lab, lab.red.token, "tune", str(good), "--detach")
    assert detached.returncode != 0 and "study 'quick' exists in team red" in detached.stderr
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(curve("bad", space={"x": {"type": "int", "low": 3,
                                                             "high": 3}})))
    done = cli(lab, lab.red.token, "tune", str(path))
    assert done.returncode != 0
    assert "space.x" in done.stderr and "Traceback" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) <= 2, done.stderr


def test_an_asha_study_prunes_finishes_and_records_its_best(lab):
    started = time.monotonic()
    study = lab.red.tune.start(curve("asha"))
    assert (study["state"], study["team"], study["owner"]) == ("RUNNING", "red", "red-dev")
    done = ended(lab.red, "asha")
    took = time.monotonic() - started
    assert done["state"] == "SUCCEEDED", done
    trials = done["trials"]
    assert sorted(t["number"] for t in trials) == list(range(12))
    by_state = {s: [t for t in trials if t["state"] == s] for s in ("COMPLETE", "PRUNED")}
    assert done["done"] == len(by_state["COMPLETE"]) >= 1
    assert done["pruned"] == len(by_state["PRUNED"]) >= 1
    assert done["done"] + done["pruned"] == 12 and done["failed"] == done["running"] == 0
    best = min(by_state["COMPLETE"], key=lambda t: t["value"])
    assert done["best"]["number"] == best["number"]
    assert done["best"]["value"] == pytest.approx(best["value"])
    assert set(done["best"]["params"]) == {"x", "y"}
    # importances come from complete trials: two at least
    assert (done["importances"] is None) == (done["done"] < 2)
    # a pruned trial is stopped at once: its job cancelled before its last step (unless
    # it was just then ending on its own)
    cut = 0
    for t in by_state["PRUNED"]:
        assert t["last_step"] < 12 and t["reason"].startswith("pruned at step")
        job = lab.wait_job(t["job"], timeout=30)
        assert job["state"] in ("CANCELLED", "SUCCEEDED")
        cut += job["state"] == "CANCELLED" and len(lab.red.jobs.metrics(t["job"], "loss")) < 12
    assert cut >= 1
    for t in by_state["COMPLETE"]:
        assert t["last_step"] == 12
        assert lab.red.jobs.get(t["job"])["state"] == "SUCCEEDED"
    shown = cli(lab, lab.red.token, "tune", "show", "asha")
    assert shown.returncode == 0, shown.stderr
    assert f"{done['done']} done, {done['pruned']} pruned, 0 running, 0 failed" in shown.stdout
    assert f"best       {done['best']['value']:.6g} (trial {best['number']})" in shown.stdout
    listed = cli(lab, lab.red.token, "tune", "ls")
    assert "asha" in listed.stdout and "SUCCEEDED" in listed.stdout
    print(f"\nASHA study: 12 trials in {took:.1f} s, {done['pruned']} pruned, best "
          f"{done['best']['value']:.4f}")


def test_other_teams_see_nothing_and_viewers_only_read(lab):
    lab.red.tune.start(curve("private", trials=1, parallel=1, pruner="none",
                             params={"steps": 2, "delay": 0.0}))
    for call in (lambda: lab.blue.tune.get("private"), lambda: lab.blue.tune.stop("private"),
                 lambda: lab.blue.tune.resume("private"),
                 lambda: lab.blue.tune.get("red/private")):
        with pytest.raises(APIError) as e:
            call()
        assert e.value.status == 404
    assert lab.blue.tune.list() == []
    assert lab.red_viewer.tune.get("private")["name"] == "private"
    with pytest.raises(APIError) as e:
        lab.red_viewer.tune.stop("private")
    assert e.value.status == 403
    assert ended(lab.red, "private")["state"] == "SUCCEEDED"


def test_a_study_stops_and_resumes(lab):
    slow = curve("paused", trials=3, parallel=2, pruner="none",
                 params={"steps": 100, "delay": 0.2})
    lab.red.tune.start(slow)
    wait_for(lambda: sum(1 for t in lab.red.tune.get("paused", importances=False)["trials"]
                         if t["job"] and lab.red.jobs.get(t["job"])["state"] == "RUNNING") == 2,
             timeout=60, interval=0.2, what="two trials running")
    stopped = cli(lab, lab.red.token, "tune", "stop", "paused")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
    s = lab.red.tune.get("paused")
    assert (s["state"], s["stopped"], s["running"]) == ("STOPPED", 2, 0)
    for t in s["trials"]:
        assert t["stopped"] and t["reason"] == "stopped by red-dev"
        lab.wait_job(t["job"], timeout=30)
        assert lab.red.jobs.get(t["job"])["state"] == "CANCELLED"
    with pytest.raises(APIError) as e:
        lab.red.tune.stop("paused")
    assert e.value.status == 409
    resumed = lab.red.tune.resume("paused")
    assert resumed["state"] == "RUNNING"
    wait_for(lambda: len(lab.red.tune.get("paused", importances=False)["trials"]) == 4, timeout=30,
             interval=0.2, what="new trials in place of the stopped ones")
    assert lab.red.tune.stop("paused")["state"] == "STOPPED"


def test_a_failing_study_ends_with_its_trials_reason_and_a_resume_replaces_them(lab):
    lab.red.tune.start(curve("failing", program=f"{PROGS}:broken", params={},
                             space={"x": {"type": "float", "low": 0.0, "high": 1.0}},
                             trials=5, parallel=1, pruner="none"))
    s = ended(lab.red, "failing")
    assert s["state"] == "FAILED" and s["failed"] == 3 and s["best"] is None
    assert "its first 3 trials failed" in s["reason"]
    assert "this trial always fails" in s["reason"]
    again = lab.red.tune.resume("failing")
    assert again["state"] == "RUNNING"
    s = ended(lab.red, "failing")
    assert s["state"] == "FAILED" and s["failed"] == 6
    assert [t["number"] for t in s["trials"] if t["replaced"]] == [0, 1, 2]


def test_a_trial_cut_off_while_it_was_asked_for_draws_its_parameters_and_runs(lab):
    # A daemon killed between Optuna storing a new trial and storing the parameters it
    # drew leaves the trial running without them (once in a full run, the killed-daemon
    # test below got a trial refused for "needs the parameter(s): x, y"). Made here on
    # purpose: a finished one-trial study gets such a trial, then resumes to two.
    import optuna

    lab.red.tune.start(curve("cut-off", trials=1, parallel=1, pruner="none",
                             params={"steps": 3, "delay": 0.05}))
    first = ended(lab.red, "cut-off")
    assert first["state"] == "SUCCEEDED", first
    storage = f"sqlite:///{next(lab.home.glob('*-optuna.db'))}"
    job = first["trials"][0]["job"]
    study = next(st for st in (optuna.load_study(study_name=n, storage=storage)
                               for n in optuna.get_all_study_names(storage))
                 if any(t.user_attrs.get("job") == job for t in st.trials))
    study.ask()  # stored, running, no parameter drawn
    lab.red.tune.resume("cut-off", trials=2)
    after = ended(lab.red, "cut-off")
    assert (after["state"], after["done"]) == ("SUCCEEDED", 2), after["trials"]
    cut = after["trials"][1]
    assert cut["state"] == "COMPLETE" and set(cut["params"]) == {"x", "y"}, cut
    assert lab.red.jobs.get(cut["job"])["params"]["x"] == cut["params"]["x"]


def test_a_killed_daemon_resumes_its_study_without_losing_or_repeating_trials(tmp_path):
    (tmp_path / "home").mkdir()
    live = LiveDaemon(tmp_path / "home", env=FAST).start()
    try:
        c = live.client
        c.tune.start(curve("survivor", trials=4, parallel=2, pruner="none",
                           params={"steps": 10, "delay": 0.4}))

        def mid_way():
            s = c.tune.get("survivor", importances=False)
            return s["done"] >= 2 and s["running"] >= 1 and s
        before = wait_for(mid_way, timeout=90, interval=0.1, what="a study mid-way")
        finished = {t["number"]: t for t in before["trials"] if t["state"] == "COMPLETE"}
        killed_at = datetime.now(timezone.utc)
        live.kill9()
        c = live.start().client
        after = ended(c, "survivor", timeout=120)
        assert after["state"] == "SUCCEEDED", after
        # it was still running when its daemon died: the new daemon's driver ended it
        assert datetime.fromisoformat(after["ended_at"]) > killed_at
        assert sorted(t["number"] for t in after["trials"]) == list(range(4))
        assert after["done"] == 4, [(t["number"], t["state"], t.get("reason"), t["job"])
                                    for t in after["trials"]]
        for number, t in finished.items():  # finished before: kept, not run again
            again = next(x for x in after["trials"] if x["number"] == number)
            assert (again["value"], again["job"]) == (t["value"], t["job"])
            assert c.jobs.get(t["job"])["attempt"] == 1
        jobs = [j for j in c.jobs.list(limit=1000)["jobs"]
                if (j["name"] or "").startswith("tune survivor #")]
        assert sorted(j["name"] for j in jobs) == [f"tune survivor #{i}" for i in range(4)]
        assert {t["job"] for t in after["trials"]} == {j["id"] for j in jobs}
        assert set(after["importances"]) == {"x", "y"}
        shown = cli(live, live.admin_token, "tune", "show", "survivor")
        assert "4 done, 0 pruned, 0 running, 0 failed" in shown.stdout, shown.stderr
        assert "importances" in shown.stdout
    finally:
        live.stop()
        live.client.close()
