"""The store on both backends: SQLite (the embedded default) and PostgreSQL."""

from __future__ import annotations

import os
import stat

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from llmos.errors import InvalidRequest, NotFound, PayloadTooLarge
from llmos.kernel.jobs import IllegalTransition, JobSpec, JobState, create_job, transition
from llmos.kernel.resources import Request
from llmos.security.artifacts import ArtifactService
from llmos.security.rbac import Principal, Role
from llmos.store import ArtifactStore, CorruptArtifact, open_database
from llmos.store.models import Artifact, Base, Job
from pg import fresh_database


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    if request.param == "sqlite":
        database = open_database(f"sqlite:///{tmp_path / 'llmos.db'}")
        yield database
        database.close()
        return
    with fresh_database("llmos_store") as url:
        database = open_database(url)
        yield database
        database.close()

def test_migrations_create_exactly_the_models_schema(db):
    assert set(inspect(db.engine).get_table_names()) >= set(Base.metadata.tables)
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    db.upgrade()  # a second upgrade is harmless


def test_sqlite_runs_in_wal_mode(tmp_path):
    database = open_database(f"sqlite:///{tmp_path / 'x.db'}")
    with database.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    database.close()


def _job(db, **spec) -> int:
    with db.session() as s:
        job = create_job(s, JobSpec(program="noop", **spec), Request(), "local")
        return job.id


def test_jobs_keep_their_history_and_utc_times(db):
    job_id = _job(db)
    with db.session() as s:
        job = s.get(Job, job_id)
        transition(s, job, JobState.SCHEDULED, "bound")
        transition(s, job, JobState.RUNNING, "started")
        with pytest.raises(IllegalTransition):
            transition(s, job, JobState.SCHEDULED, "twice")
    with db.session() as s:
        job = s.get(Job, job_id)
        assert [(t.from_state, t.to_state, t.reason) for t in job.transitions] == [
            (None, "PENDING", "submitted"), ("PENDING", "SCHEDULED", "bound"),
            ("SCHEDULED", "RUNNING", "started")]
        assert job.started_at.tzinfo is not None and job.created_at <= job.started_at


def test_terminal_states_are_final(db):
    job_id = _job(db)
    with db.session() as s:
        job = s.get(Job, job_id)
        transition(s, job, JobState.CANCELLED, "cancelled")
        for state in JobState:
            with pytest.raises(IllegalTransition):
                transition(s, job, state, "again")


def test_dependencies_are_stored(db):
    first = _job(db)
    second = _job(db, depends_on=[first])
    with db.session() as s:
        assert s.get(Job, second).depends_on == [first]


@pytest.fixture
def artifacts(db, tmp_path):
    return ArtifactService(db, ArtifactStore(tmp_path / "artifacts"), max_bytes=1 << 20)


# A developer of team "lab" (the service checks roles itself; see tests/security).
ALICE = Principal(name="alice", user_id=1, roles={"lab": Role.DEVELOPER})


def test_artifacts_round_trip_with_lineage(artifacts):
    raw = artifacts.put(ALICE, [b"raw ", b"text"], "raw.txt", "text")
    clean = artifacts.put(ALICE, [b"clean"], "clean.txt", "text", parents=[raw.id])
    again = artifacts.put(ALICE, [b"raw text"], "copy.txt")
    assert clean.parents == [raw.id] and clean.size == 5
    assert again.sha256 == raw.sha256  # one blob, two records
    meta, chunks = artifacts.open(ALICE, raw.id)
    assert b"".join(chunks) == b"raw text"


def test_a_corrupted_or_missing_blob_is_an_error(artifacts):
    art = artifacts.put(ALICE, [b"precious"], "w.bin")
    blob = artifacts.store.path(art.sha256)
    os.chmod(blob, stat.S_IRUSR | stat.S_IWUSR)
    blob.write_bytes(b"tampered")
    with pytest.raises(CorruptArtifact, match="corrupted"):
        artifacts.open(ALICE, art.id)
    blob.unlink()
    with pytest.raises(CorruptArtifact, match="missing"):
        artifacts.open(ALICE, art.id)


def test_bad_uploads_write_nothing(artifacts, db):
    with pytest.raises(InvalidRequest):
        artifacts.put(ALICE, [b"x"], "../escape")
    with pytest.raises(NotFound):
        artifacts.put(ALICE, [b"x"], "orphan.txt", parents=[12345])
    with pytest.raises(NotFound):
        artifacts.put(ALICE, [b"x"], "orphan.txt", job_id=12345)
    with pytest.raises(PayloadTooLarge):
        artifacts.put(ALICE, [b"x" * (1 << 19)] * 3, "big.bin")
    with db.session() as s:
        assert s.query(Artifact).count() == 0
    assert list(artifacts.store.blobs.iterdir()) == []
    assert list(artifacts.store.tmp.iterdir()) == []
