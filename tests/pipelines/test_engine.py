"""The pipeline engine on a running system: graphs of real kernel jobs (small programs),
checked whole before anything runs, cached, mapped, conditional, stopped on failure,
resumed, cancelled, and started by triggers (a dataset's new version, a cron schedule on
an injected clock)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from live import wait_for
from sqlalchemy import delete, func, select

from llmos.config import Settings
from llmos.errors import Conflict, Forbidden, InvalidRequest, NotFound
from llmos.store.models import Job
from llmos.system import System

FLOW = Path(__file__).parent / "flow_programs.py"


def prog(name: str) -> str:
    return f"{FLOW}:{name}"


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    """One llmos system in this process, its API served on a port of its own (jobs that
    store what they made, like an ingest, call it), as `llmos up` runs it."""
    import threading

    import uvicorn
    from live import free_port

    from llmos.api.app import create_app

    home = tmp_path_factory.mktemp("pipelines-home")
    # the steps' programs and files: where the team's jobs may read
    files = tmp_path_factory.mktemp("pipeline-files")
    port = free_port()
    boots = []
    sys_ = System(Settings(home=home, cpus=2, tick_s=0.05, port=port,
                           ingest_roots=f"{FLOW.parent}:{files}"),
                  api_url=f"http://127.0.0.1:{port}", on_bootstrap=boots.append)
    sys_.admin = sys_.tokens.authenticate(boots[0].token)
    sys_.files = files
    server = uvicorn.Server(uvicorn.Config(create_app(sys_), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()  # its lifespan starts the system
    wait_for(lambda: server.started, timeout=60, what="the API to listen")
    yield sys_
    server.should_exit = True  # its lifespan closes the system
    thread.join(timeout=60)


def member(system, user: str, team: str):
    """``user``, a developer of ``team`` (both made when missing), as their runs act."""
    from llmos.errors import Conflict as Exists

    for make in (lambda: system.identity.create_team(system.admin, team),
                 lambda: system.identity.create_user(system.admin, user)):
        try:
            make()
        except Exists:
            pass
    system.identity.set_member(system.admin, team, user, "developer")
    return system.tokens.principal_of_user(user, team)


def jobs_count(system) -> int:
    with system.db.session() as s:
        return s.scalar(select(func.count()).select_from(Job))


def finished(system, run_id: int, timeout: float = 120):
    return wait_for(lambda: (r := system.pipelines.get_run(system.admin, run_id)).state
                    in ("SUCCEEDED", "FAILED", "CANCELLED") and r, timeout=timeout,
                    interval=0.1, what=f"pipeline run {run_id} to end")


def steps(run) -> dict:
    return {s.name: s for s in run.steps}


def graph(name="numbers", x=3.0, **extra):
    """square(x) and square(x+1) in parallel, then their total."""
    return {"name": name, "params": {"x": x, "y": {"type": "float", "default": 4.0}},
            "steps": {
                "a": {"program": prog("square"), "params": {"x": "${params.x}"}},
                "b": {"program": prog("square"), "params": {"x": "${params.y}"}},
                "sum": {"program": prog("total"),
                        "inputs": {"values": ["${steps.a.result}", "${steps.b.result}"]}},
                **extra}}


# -- checked whole, before anything runs ------------------------------------------------------

BAD = [
    ({"steps": {"a": {"program": "noop", "after": ["b"]}, "b": {"program": "noop",
                                                               "after": ["a"]}}},
     "steps: a cycle"),
    ({"steps": {"a": {"program": "no.such.module:main"}}}, "step a: program:"),
    ({"steps": {"a": {"program": prog("square"), "params": {"x": 1.0, "z": 2}}}},
     "step a: program:"),
    ({"steps": {"t": {"program": "train.finetune", "inputs": {"model": "m", "dataset": "d"},
                      "params": {"output": "x", "recipe": {}, "learnin_rate": 1}}}},
     "step t: params.learnin_rate: unknown parameter of train.finetune"),
    ({"steps": {"a": {"program": prog("square"), "params": {"x": 1.0},
                      "outputs": {"scores": "metrics"}},
                "t": {"program": "train.evaluate",
                      "inputs": {"model": "${steps.a.scores}", "dataset": "d"}}}},
     "step t: inputs.model: expects a model, but '${steps.a.scores}' is a metrics"),
    ({"steps": {"a": {"program": "noop", "when": "__import__('os').system('id')"}}},
     "step a: when:"),
    ({"steps": {"a": {"program": "noop", "when": "params.nope > 1"}}},
     "step a: when: unknown parameter ${params.nope}"),
    ({"steps": {"a": {"program": prog("square"), "params": {"x": "${item}"}}}},
     "step a: params: ${item} is only defined in a step with map"),
    ({"steps": {"a": {"program": prog("total"), "inputs": {"values": "${steps.zz.result}"}}}},
     "step a: inputs: unknown step 'zz'"),
    ({"steps": {"a": {"program": "noop"}, "b": {"program": "noop",
                                                "inputs": {"x": "${steps.a.model}"}}}},
     "step b: inputs: step a has no output 'model'"),
    ({"steps": {"a": {"program": "noop", "bogus": 1}}}, "pipeline: steps.a.bogus"),
    ({"params": {"n": 1}, "steps": {"a": {"program": "noop"}}, "triggers": [{"cron": "61 * * * *"}]},
     "triggers: bad cron schedule"),
]


@pytest.mark.parametrize("body,words", BAD, ids=[w.split(":")[0] + str(i)
                                                  for i, (_, w) in enumerate(BAD)])
def test_a_bad_pipeline_is_refused_whole_naming_the_step_and_starts_nothing(system, body,
                                                                             words):
    before = jobs_count(system)
    with pytest.raises(InvalidRequest) as e:
        system.pipelines.run(system.admin, {"name": "bad", **body})
    assert words in str(e.value), str(e.value)
    assert jobs_count(system) == before
    assert not system.pipelines.runs(system.admin, state=["PENDING", "RUNNING"])


def test_unknown_run_params_are_refused(system):
    with pytest.raises(InvalidRequest, match="unknown parameter 'z'"):
        system.pipelines.run(system.admin, graph(), params={"z": 1})
    with pytest.raises(InvalidRequest, match="'x' must be float"):
        system.pipelines.run(system.admin, graph(), params={"x": "three"})


# -- runs, the cache, changes ---------------------------------------------------------------


def test_a_graph_runs_then_a_rerun_is_cached_and_a_changed_param_reruns_only_its_branch(
        system):
    run = finished(system, system.pipelines.run(system.admin, graph()).id)
    assert run.state == "SUCCEEDED", run.reason
    got = steps(run)
    assert got["sum"].outputs["result"] == {"value": 9.0 + 16.0}
    assert {s.state for s in run.steps} == {"SUCCEEDED"}
    assert all(s.job_id for s in run.steps)

    before = jobs_count(system)
    again = finished(system, system.pipelines.run(system.admin, graph()).id)
    assert again.state == "SUCCEEDED"
    assert {s.state for s in again.steps} == {"CACHED"}
    assert jobs_count(system) == before  # no job started at all
    assert all(s.reason == f"cached from run {run.id}" for s in again.steps)
    assert steps(again)["sum"].outputs == got["sum"].outputs

    changed = finished(system, system.pipelines.run(system.admin, graph(),
                                                    params={"y": 5.0}).id)
    states = {n: s.state for n, s in steps(changed).items()}
    assert states == {"a": "CACHED", "b": "SUCCEEDED", "sum": "SUCCEEDED"}
    assert steps(changed)["sum"].outputs["result"] == {"value": 9.0 + 25.0}
    assert jobs_count(system) == before + 2

    forced = finished(system, system.pipelines.run(system.admin, graph(), no_cache=True).id)
    assert {s.state for s in forced.steps} == {"SUCCEEDED"}


def test_a_map_fans_out_and_its_results_fan_in(system):
    spec = {"name": "fan", "params": {"xs": [1.5, 2.5, 6.0]},
            "steps": {"sq": {"program": prog("square"), "map": "${params.xs}",
                             "params": {"x": "${item}"}},
                      "sum": {"program": prog("total"), "inputs": {"values": "${steps.sq.result}"}}}}
    run = finished(system, system.pipelines.run(system.admin, spec).id)
    assert run.state == "SUCCEEDED", run.reason
    got = steps(run)
    assert [got[f"sq[{i}]"].state for i in range(3)] == ["SUCCEEDED"] * 3
    assert got["sum"].outputs["result"] == {"value": 2.25 + 6.25 + 36.0}
    assert got["sq"].outputs["result"] == [{"value": 2.25}, {"value": 6.25}, {"value": 36.0}]
    # the same work in another pipeline of the team is the same step: cached
    again = finished(system, system.pipelines.run(system.admin, {**spec, "name": "fan2"}).id)
    assert {s.state for s in again.steps} == {"CACHED"}


def test_when_false_skips_a_step_and_what_depends_on_it(system):
    spec = graph("gated", big={"program": prog("square"), "params": {"x": 1.0},
                               "when": "steps.sum.result.value > 100"})
    spec["steps"]["after_big"] = {"program": "noop", "after": ["big"]}
    run = finished(system, system.pipelines.run(system.admin, spec).id)
    assert run.state == "SUCCEEDED"
    got = steps(run)
    assert got["big"].state == "SKIPPED"
    assert got["big"].reason == "when: steps.sum.result.value > 100 is false"
    assert got["after_big"].state == "SKIPPED" and "big was skipped" in got["after_big"].reason


def test_a_failing_step_stops_its_dependents_and_a_resume_reruns_only_what_failed(system):
    flag = system.files / "flag.txt"
    spec = graph("fixable", read={"program": prog("read_text"),
                                  "params": {"path": str(flag)}},
                 both={"program": prog("pair"),
                       "inputs": {"left": "${steps.read.result}", "right": "${steps.sum.result}"}},
                 # only ordered after it: its job waits in the kernel, which stops it
                 tail={"program": "noop", "after": ["read"]})
    run = finished(system, system.pipelines.run(system.admin, spec).id)
    assert run.state == "FAILED"
    got = steps(run)
    assert got["read"].state == "FAILED" and "is missing" in got["read"].reason
    assert got["both"].state == "STOPPED" and got["both"].reason == "step read failed"
    assert got["tail"].state == "STOPPED" and got["tail"].reason == "step read failed"
    assert got["sum"].state in ("SUCCEEDED", "CACHED")  # the independent branch went on
    assert "step read failed" in run.reason
    done_jobs = {n: s.job_id for n, s in got.items() if s.state == "SUCCEEDED"}

    flag.write_text("fixed\n")
    flag.chmod(0o644)
    resumed = finished(system, system.pipelines.resume(system.admin, run.id).id)
    assert resumed.state == "SUCCEEDED", resumed.reason
    again = steps(resumed)
    assert again["read"].outputs["result"] == {"value": "fixed"}
    assert {n: again[n].job_id for n in done_jobs} == done_jobs  # not run again
    with pytest.raises(Conflict, match="only a failed or cancelled run resumes"):
        system.pipelines.resume(system.admin, run.id)


def test_a_cancelled_run_cancels_its_jobs(system):
    spec = {"name": "slow", "steps": {
        "nap": {"program": "sleep", "params": {"seconds": 300}},
        "next": {"program": "echo", "params": {"message": "after the nap"}, "after": ["nap"]},
        "quick": {"program": "noop", "after": ["nap"]}}}
    run = system.pipelines.run(system.admin, spec)
    waiting = wait_for(lambda: (r := steps(system.pipelines.get_run(system.admin, run.id)))[
        "next"].job_id and r, what="the steps' jobs")
    # a step only ordered after another waits for it in the kernel, already submitted
    assert system.jobs.get(system.admin, waiting["next"].job_id).depends_on == [
        waiting["nap"].job_id]
    # even one answered from the cache (a no-op ran before) does not end before it
    assert waiting["quick"].state == "RUNNING"
    ended = system.pipelines.cancel(system.admin, run.id)
    assert ended.state == "CANCELLED" and ended.reason == "cancelled by admin"
    nap = steps(ended)["nap"]
    assert {s.state for s in ended.steps} == {"CANCELLED"}
    wait_for(lambda: system.jobs.get(system.admin, nap.job_id).state == "CANCELLED",
             what="the job to be cancelled")
    with pytest.raises(Conflict):
        system.pipelines.cancel(system.admin, run.id)


# -- rights ---------------------------------------------------------------------------------


def test_another_teams_runs_do_not_exist_and_jobs_start_no_pipelines(system):
    run = finished(system, system.pipelines.run(system.admin, graph("mine")).id)
    mallory = member(system, "mallory", "other")
    with pytest.raises(NotFound):
        system.pipelines.get_run(mallory, run.id)
    with pytest.raises(NotFound):
        system.pipelines.cancel(mallory, run.id)
    assert system.pipelines.runs(mallory) == []
    assert system.pipelines.list(mallory) == []
    from dataclasses import replace
    with pytest.raises(Forbidden, match="a job's token"):
        system.pipelines.run(replace(mallory, job_id=1), graph("x"))


def test_a_members_pipeline_reads_only_where_its_team_may(system):
    """Through a pipeline a member reaches no more than by hand: a program file or raw
    data outside the team's read roots is refused, naming the step."""
    gina = member(system, "gina", "green")
    outside = {"name": "peek", "steps": {"a": {"program": "/etc/hostname.py:main"}}}
    with pytest.raises(Forbidden, match="step a: program '/etc/hostname.py:main'"):
        system.pipelines.run(gina, outside)
    sneak = {"name": "sneak", "steps": {"ingest": {"program": "data.ingest", "params": {
        "dataset": "secrets", "sources": ["/etc/passwd"]}}}}
    run = finished(system, system.pipelines.run(gina, sneak).id)
    step = steps(run)["ingest"]
    assert run.state == "FAILED" and step.state == "FAILED" and step.job_id is None
    assert "outside the folders" in step.reason, step.reason
    # her runs act in her team, as her
    assert run.team == "green" and run.owner == "gina"


# -- triggers -------------------------------------------------------------------------------


def runs_of(system, name: str) -> list:
    return sorted(system.pipelines.runs(system.admin, pipeline=name), key=lambda r: r.id)


def at(system, when: datetime, pipeline: str) -> None:
    """Set the engine's clock and wait until it has taken the schedule's slot due then
    (whether it started a run for it or not)."""
    from llmos.pipelines.schedule import due

    [t] = system.pipelines.triggers(system.admin, pipeline)
    slot = due(t.target, t.last_fired_at or t.created_at, when)
    system.pipelines.engine.clock = lambda: when
    system.pipelines.engine.wake()
    wait_for(lambda: system.pipelines.triggers(system.admin, pipeline)[0].last_fired_at
             == slot, what=f"the engine to take {pipeline}'s slot {slot}")
    with system.pipelines.engine.lock:  # that firing has finished (its run is written)
        pass


def applied_at(system, spec: dict, when: datetime, who=None, team: str | None = None) -> None:
    """Apply ``spec`` as if at ``when`` (its schedule counts from then), as ``who``
    (the administrator unless given)."""
    from llmos.store.models import PipelineTrigger

    system.pipelines.engine.clock = lambda: when
    p = system.pipelines.apply(who or system.admin, spec, team=team)
    with system.db.session() as s:
        for t in s.scalars(select(PipelineTrigger).where(PipelineTrigger.pipeline_id == p.id)):
            t.created_at, t.last_fired_at = when, None


@pytest.fixture
def clock(system):
    """The engine's clock back to the real one after the test, and the schedules the test
    made on its own clock gone (the next test's clock would find their slots due)."""
    yield
    from llmos.store.models import PipelineTrigger, utcnow
    with system.pipelines.engine.lock, system.db.session() as s:
        s.execute(delete(PipelineTrigger).where(PipelineTrigger.kind == "cron"))
    system.pipelines.engine.clock = utcnow


def test_a_cron_trigger_starts_one_run_per_due_slot_on_the_engines_clock(system, clock):
    now = datetime(2027, 1, 1, 2, 30, tzinfo=timezone.utc)
    applied_at(system, {"name": "nightly", "triggers": [{"cron": "0 3 * * *"}],
                        "steps": {"n": {"program": "noop"}}}, now)
    at(system, now + timedelta(hours=1), "nightly")  # 03:30: the 03:00 slot is due
    [run] = runs_of(system, "nightly")
    assert finished(system, run.id).state == "SUCCEEDED"
    assert run.trigger == "cron 0 3 * * * at 2027-01-01 03:00 UTC"
    at(system, now + timedelta(days=3, hours=1), "nightly")  # down for three days
    assert len(runs_of(system, "nightly")) == 2  # one run, not three
    from llmos.pipelines.schedule import due
    assert due("0 3 * * *", now, now + timedelta(minutes=20)) is None  # the real parser


def ingest(system, dataset: str, lines: list[str]) -> None:
    from llmos.data.datasets import IngestRequest

    path = system.files / f"{dataset}-{len(lines)}.jsonl"
    path.write_text("".join(f'{{"text": "{t}"}}\n' for t in lines))
    path.chmod(0o644)
    job = system.datasets.ingest(system.admin, IngestRequest(dataset=dataset,
                                                             sources=[str(path)]))
    wait_for(lambda: system.jobs.get(system.admin, job.id).state == "SUCCEEDED", timeout=120,
             what="the ingest job")


def test_a_new_dataset_version_starts_a_run_once(system):
    ingest(system, "raw", ["the first version of the raw data"])
    spec = {"name": "on-raw", "triggers": [{"dataset": "raw"}],
            "steps": {"n": {"program": "noop"}}}
    system.pipelines.apply(system.admin, spec)
    [t] = system.pipelines.triggers(system.admin, "on-raw")
    assert t.last_version == 1  # the version there when it was applied starts nothing
    ingest(system, "raw", ["the first version of the raw data", "and a second line"])
    [run] = wait_for(lambda: runs_of(system, "on-raw"), what="a run of on-raw")
    run = finished(system, run.id)
    assert run.state == "SUCCEEDED" and run.trigger == "dataset raw:2"
    [t] = system.pipelines.triggers(system.admin, "on-raw")
    assert (t.kind, t.target, t.last_version) == ("dataset", "raw", 2)
    assert len(runs_of(system, "on-raw")) == 1


def test_overlapping_triggered_runs_are_skipped_queued_or_replace_the_older(system, clock):
    start = datetime(2027, 2, 1, 0, 0, 30, tzinfo=timezone.utc)
    minute = timedelta(minutes=1)

    def apply(overlap: str) -> None:
        applied_at(system, {"name": "busy", "overlap": overlap,
                            "triggers": [{"cron": "* * * * *"}],
                            "steps": {"nap": {"program": "sleep", "params": {"seconds": 300}}}},
                   start + (2 + ["skip", "queue", "cancel"].index(overlap) * 2) * minute)

    def state(run_id: int) -> str:
        return system.pipelines.get_run(system.admin, run_id).state

    apply("skip")
    at(system, start + 3 * minute, "busy")
    [first] = runs_of(system, "busy")
    wait_for(lambda: state(first.id) == "RUNNING", what="the first run")
    at(system, start + 4 * minute, "busy")  # the next slot: skipped
    assert len(runs_of(system, "busy")) == 1
    apply("queue")
    at(system, start + 5 * minute, "busy")
    _, queued = runs_of(system, "busy")
    assert state(queued.id) == "PENDING" and state(first.id) == "RUNNING"
    assert queued.trigger.startswith("cron * * * * * at")
    system.pipelines.cancel(system.admin, first.id)
    wait_for(lambda: state(queued.id) == "RUNNING", what="the queued run to start")
    apply("cancel")
    at(system, start + 7 * minute, "busy")
    *_, newer = runs_of(system, "busy")
    older = system.pipelines.get_run(system.admin, queued.id)
    assert older.state == "CANCELLED" and older.reason.startswith("cancelled: a newer run")
    wait_for(lambda: state(newer.id) == "RUNNING", what="the newer run")
    system.pipelines.cancel(system.admin, newer.id)


def test_an_apply_while_a_trigger_fires_is_kept(system, clock, monkeypatch):
    """The trigger reads the stored file, then acts as its owner; a user's apply landing
    in between stays the pipeline's file (the fired run does not write back the one it
    read)."""
    start = datetime(2027, 3, 1, 0, 0, 30, tzinfo=timezone.utc)
    spec = {"name": "racing", "overlap": "skip", "triggers": [{"cron": "* * * * *"}],
            "steps": {"n": {"program": "noop"}}}
    applied_at(system, spec, start)
    tokens = system.pipelines.tokens
    as_owner = tokens.principal_of_user

    def owner_while_the_user_applies(*args, **kwargs):
        monkeypatch.setattr(tokens, "principal_of_user", as_owner)
        system.pipelines.apply(system.admin, {**spec, "overlap": "queue"})
        return as_owner(*args, **kwargs)

    monkeypatch.setattr(tokens, "principal_of_user", owner_while_the_user_applies)
    at(system, start + timedelta(minutes=1), "racing")
    [run] = runs_of(system, "racing")
    assert run.spec["overlap"] == "skip"  # the run is of the file that fired
    assert system.pipelines.get(system.admin, "racing").spec["overlap"] == "queue"
    assert finished(system, run.id).state == "SUCCEEDED"


# -- what the review of this engine found ----------------------------------------------------


def test_a_deeply_nested_or_aliased_file_is_a_422(system):
    for text in ("[" * 5000 + "]" * 5000, "name: x\nsteps: &s {a: {program: noop}}\nmore: *s"):
        with pytest.raises(InvalidRequest, match="nested more than|aliases"):
            system.pipelines.run(system.admin, text)


def test_a_malformed_value_from_a_program_fails_its_reader_and_the_run_ends(system):
    spec = {"name": "shapes", "steps": {
        "a": {"program": prog("fake_model"), "outputs": {"m": "model"}},
        "b": {"program": "train.evaluate", "inputs": {"model": "${steps.a.m}",
                                                       "dataset": "nothing"}}}}
    run = finished(system, system.pipelines.run(system.admin, spec).id)
    b = steps(run)["b"]
    assert run.state == "FAILED" and b.state == "FAILED" and b.job_id is None
    assert b.reason.startswith("not a model version"), b.reason


def test_a_step_that_fails_after_its_job_succeeded_still_stops_what_comes_after(system):
    spec = {"name": "promised", "steps": {
        "a": {"program": prog("no_output"), "outputs": {"x": "value"}},
        "b": {"program": "echo", "params": {"message": "after a"}, "after": ["a"]}}}
    run = finished(system, system.pipelines.run(system.admin, spec).id)
    got = steps(run)
    assert got["a"].state == "FAILED" and "returned no 'x'" in got["a"].reason
    assert got["b"].state == "STOPPED" and got["b"].job_id is None  # never submitted


def test_an_import_step_reads_only_where_its_run_may_and_never_a_device(system, tmp_path):
    from llmos.pipelines.steps import StepFailed, files_fingerprint

    gina = member(system, "gina", "green")
    spec = {"name": "grab", "steps": {"imp": {"program": "models.import",
                                              "params": {"name": "grabbed", "source": "/etc"}}}}
    run = finished(system, system.pipelines.run(gina, spec).id)
    imp = steps(run)["imp"]
    assert imp.state == "FAILED" and imp.cache_key is None and imp.job_id is None
    assert "/etc is outside the folders" in imp.reason, imp.reason
    fifo = tmp_path / "fifo"
    import os
    os.mkfifo(fifo)
    with pytest.raises(StepFailed, match="is not a regular file"):
        files_fingerprint([fifo])


def test_evaluation_results_and_promotion_records_are_not_anyones_to_write(system, tmp_path):
    import tiny_models
    from offline_models import minilm_dir

    folder = tiny_models.bert(system.files / "tiny-bert", minilm_dir(), hidden=32)
    spec = {"name": "importer", "steps": {"imp": {
        "program": "models.import", "params": {"name": "tiny", "source": str(folder)},
        "resources": {"cpu": 1, "memory_mb": 3072}}}}
    run = finished(system, system.pipelines.run(system.admin, spec).id, timeout=300)
    assert run.state == "SUCCEEDED", run.reason
    assert steps(run)["imp"].outputs["model"]["version"] == 1
    again = finished(system, system.pipelines.run(system.admin, spec).id)
    assert steps(again)["imp"].state == "CACHED"  # the same files: no second import
    with pytest.raises(Forbidden, match="evaluation job of tiny:1 only"):
        system.registry.add_metrics(system.admin, "tiny", "1", "eval:d:1:test",
                                    {"accuracy": 1.0})
    with pytest.raises(Forbidden, match="promote step only"):
        system.registry.add_metrics(system.admin, "tiny", "1", "promotion:champion", {})
    system.registry.add_metrics(system.admin, "tiny", "1", "my-notes", {"accuracy": 1.0})


def test_a_trigger_whose_owner_is_now_a_viewer_starts_nothing(system, clock):
    start = datetime(2027, 4, 1, 0, 0, 30, tzinfo=timezone.utc)
    vera = member(system, "vera", "violet")
    applied_at(system, {"name": "veras", "triggers": [{"cron": "* * * * *"}],
                        "steps": {"n": {"program": "noop"}}}, start, who=vera, team="violet")
    at(system, start + timedelta(minutes=1), "veras")
    [run] = runs_of(system, "veras")  # a developer's schedule runs
    assert finished(system, run.id).state == "SUCCEEDED"
    system.identity.set_member(system.admin, "violet", "vera", "viewer")
    at(system, start + timedelta(minutes=2), "veras")  # the slot is taken, and starts nothing
    assert len(runs_of(system, "veras")) == 1
