"""The event log's store hooks on SQLite and PostgreSQL, in process: changed rows of jobs,
nodes, models, datasets and deployments become events in their own transaction, a reader
sees only its teams (and node events), and on PostgreSQL a reader never moves past an id
whose transaction has not committed yet."""

from __future__ import annotations

from datetime import UTC

import pytest
from pg import fresh_database

from llmos.kernel.jobs import JobSpec, JobState, create_job, request_of, transition
from llmos.monitor.events import EventLog
from llmos.store import open_database
from llmos.store.models import (
    Dataset,
    DatasetVersion,
    Deployment,
    Event,
    Model,
    ModelVersion,
    Node,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def log(request, tmp_path):
    if request.param == "sqlite":
        db = open_database(f"sqlite:///{tmp_path / 'llmos.db'}")
        yield EventLog(db)
        db.close()
        return
    with fresh_database("llmos_events") as url:
        db = open_database(url)
        yield EventLog(db)
        db.close()


def _job(s, team: str) -> int:
    from llmos.kernel.resources import Request

    spec = JobSpec(program="noop")
    job = create_job(s, spec, Request(cpu=1, memory_mb=64), "local", team=team)
    s.flush()
    assert request_of(job).cpu == 1
    return job.id


def test_changes_become_events_in_their_transaction_and_readers_see_their_teams(log):
    log.install()
    db = log.db
    with db.session() as s:
        job_id = _job(s, "team-a")
    with db.session() as s:
        from llmos.store.models import Job

        transition(s, s.get(Job, job_id), JobState.CANCELLED, "no longer needed")
    with db.session() as s:
        s.add(Node(name="n1", executor="local", state="ready", labels={}, capacity={}, free={}))
    with db.session() as s:
        s.get(Node, "n1").state = "draining"
    with db.session() as s:
        model = Model(name="m", team="team-b", owner="bob")
        data = Dataset(name="d", team="team-a", owner="alice")
        s.add_all([model, data])
        s.flush()
        version = ModelVersion(model_id=model.id, version=1, task="causal-lm", parameters=1,
                               size_bytes=1, dtype="f32", info={}, files=[], lineage={},
                               metrics={}, card="", owner="bob")
        s.add_all([version, DatasetVersion(dataset_id=data.id, version=1, content_hash="0" * 64,
                                           shards=[], schema={}, stats={}, lineage={})])
        s.flush()
        s.add(Deployment(name="chat", team="team-b", owner="bob", model="m", ref="1",
                         version_id=version.id, engine="transformers", replicas=1,
                         max_batch=8, max_queue=64, priority="normal", pool="default"))
    with db.session() as s:
        s.query(Deployment).one().replicas = 2
    with db.session() as s:
        s.delete(s.query(Deployment).one())
    with db.session() as s:  # a rolled-back change leaves no event
        s.add(Node(name="n2", executor="local", state="ready", labels={}, capacity={}, free={}))
        s.flush()
        s.rollback()
    everything, cursor = log.read(0, limit=1000)
    assert [(e["kind"], e["subject"], e["action"], e["state"]) for e in everything] == [
        ("job", str(job_id), "created", "PENDING"),
        ("job", str(job_id), "state", "CANCELLED"),
        ("node", "n1", "created", "ready"),
        ("node", "n1", "state", "draining"),
        ("model", "m", "created", None),
        ("dataset", "d", "created", None),
        ("deployment", "chat", "created", None),
        ("deployment", "chat", "updated", None),
        ("deployment", "chat", "deleted", None),
    ]
    assert cursor == everything[-1]["id"]
    assert everything[1]["detail"]["reason"] == "no longer needed"
    assert everything[4]["team"] == "team-b" and everything[4]["detail"]["version"] == 1
    team_a, _ = log.read(0, teams={"team-a"}, limit=1000)
    assert {(e["kind"], e["team"]) for e in team_a} == {("job", "team-a"), ("node", None),
                                                         ("dataset", "team-a")}
    assert log.read(0, teams=set(), public=False)[0] == []
    assert [e["kind"] for e in log.recent(kinds=["node"], teams={"team-c"})] == ["node"] * 2
    assert log.read(0, subject="chat", kinds=["deployment"], teams={"team-a"})[0] == []


@pytest.fixture
def pg_log():
    with fresh_database("llmos_events") as url:
        db = open_database(url)
        yield EventLog(db)
        db.close()


def test_a_reader_waits_for_an_earlier_transaction_to_commit(pg_log):
    """PostgreSQL only: SQLite serialises writers, so its ids always commit in order."""
    log = pg_log
    log.install()
    with log.db.session() as early:
        log.record(early, "alert", "r", "firing", None)
        early.flush()  # id N taken, not committed
        with log.db.session() as late:
            log.record(late, "alert", "r", "resolved", None)
        found, cursor = log.read(0)
        assert found == [] and cursor == 0  # never past the uncommitted id N
    found, cursor = log.read(0)
    assert [e["action"] for e in found] == ["firing", "resolved"]
    with log.db.session() as s:
        assert s.query(Event).count() == 2


def test_a_missing_id_is_passed_over_once_a_later_row_is_old_enough():
    from datetime import datetime, timedelta

    from llmos.monitor.events import _safe_upto

    now = datetime(2026, 1, 1, tzinfo=UTC)
    old, new = now - timedelta(seconds=10), now
    expired = now - timedelta(seconds=5)
    assert _safe_upto(0, [(1, new), (2, new)], expired) == 2
    assert _safe_upto(0, [(1, new), (3, new)], expired) == 1  # 2 may still commit
    assert _safe_upto(0, [(1, new), (3, old), (4, new)], expired) == 4  # 2 rolled back


def test_events_older_than_the_keeping_time_are_pruned(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'llmos.db'}")
    log = EventLog(db)
    try:
        from datetime import timedelta

        from llmos.store.models import utcnow

        with db.session() as s:
            for age_days in (40, 35, 1, 0):
                s.add(Event(at=utcnow() - timedelta(days=age_days), kind="alert", subject="r",
                            action="firing"))
        assert log.prune(keep_s=30 * 86400) == 2
        assert [e["at"][:10] for e in log.read(0)[0]] == sorted(
            (utcnow() - timedelta(days=d)).isoformat()[:10] for d in (1, 0))
        assert log.prune(keep_s=30 * 86400) == 0
    finally:
        db.close()


def test_a_read_passes_over_thousands_of_other_teams_events(tmp_path):
    """``since`` finds a team's event behind more than ``SCAN`` ids of another team, and a
    reader with nothing to see gets the cursor of the newest id (not an empty answer
    stuck at its ``since``)."""
    from datetime import timedelta

    from llmos.monitor.events import SCAN
    from llmos.store.models import utcnow

    db = open_database(f"sqlite:///{tmp_path / 'llmos.db'}")
    log = EventLog(db)
    try:
        old = utcnow() - timedelta(minutes=1)
        with db.session() as s:
            s.add_all([Event(at=old, kind="alert", subject="r", action="firing", team="team-a")
                       for _ in range(2 * SCAN + 500)])
            s.add(Event(at=old, kind="alert", subject="mine", action="firing", team="team-b"))
        newest = log.latest_id()
        found, cursor = log.read(0, teams={"team-b"})
        assert [e["subject"] for e in found] == ["mine"] and cursor == newest
        assert log.read(0, teams={"team-c"}, public=False) == ([], newest)
    finally:
        db.close()
