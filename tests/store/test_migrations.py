"""Migrations upgrade a populated database, not only an empty one, on both backends.

A store is brought to the revision before the newest (and, for the data migration that
gave every old row a team, to the revision before identities), filled with rows written
in that schema's own SQL — users, teams, tokens, jobs with their history, artifacts with
lineage, datasets, models with versions and aliases, an audit chain — then upgraded to
head. Every row must still be there, unchanged, and the app must read it: its ORM models,
a token that authenticates, an audit chain that verifies, a model version found by alias.

The rows below are SQL of the schema at ``PREVIOUS``; a migration that changes a table
they touch must update them (that is the point: it shows the upgrade keeps old data).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Connection

from llmos.models.info import ModelInfo
from llmos.security.audit import AuditLog, record_hash
from llmos.security.identity import IdentityService
from llmos.security.rbac import Principal, Role
from llmos.security.tokens import TokenService
from llmos.store import open_database
from llmos.store.db import MIGRATIONS_DIR, Database
from llmos.store.models import (ApiToken, Artifact, Base, Dataset, Deployment, Job, Model,
                                ModelVersion, Team, User)
from pg import fresh_database

ALEMBIC = Config()
ALEMBIC.set_main_option("script_location", str(MIGRATIONS_DIR))
SCRIPTS = ScriptDirectory.from_config(ALEMBIC)
HEAD = SCRIPTS.get_current_head()
PREVIOUS = SCRIPTS.get_revision(HEAD).down_revision
BEFORE_IDENTITIES = "0004"  # 0005 gave every existing row the team "default"

AT = datetime(2026, 11, 20, 9, 30, 15, 123456, tzinfo=timezone.utc)
SECRET = "llmos_" + "k" * 43  # alice's token, stored only as its sha256
SHA = {name: hashlib.sha256(name.encode()).hexdigest() for name in (
    "raw.txt", "clean.txt", "train-00000.parquet", "report.json", "config.json")}
INFO = {"architecture": "BertModel", "model_type": "bert", "task": "encoder",
        "parameters": 4_386_560, "dtypes": ["float32"], "size_bytes": 22,
        "files": [{"path": "config.json", "size": 22, "sha256": SHA["config.json"]}],
        "weight_files": [], "tokenizer_files": ["vocab.txt"], "vocab_size": 30522,
        "chat_template": False, "context_length": 512, "labels": None, "gguf": None,
        "warnings": []}


@pytest.fixture(params=["sqlite", "postgres"])
def empty(request, tmp_path):
    """A database with no tables at all."""
    if request.param == "sqlite":
        database = open_database(f"sqlite:///{tmp_path / 'llmos.db'}", migrate=False)
        yield database
        database.close()
        return
    with fresh_database("llmos_migrate") as url:
        database = open_database(url, migrate=False)
        yield database
        database.close()


def migrate(db: Database, revision: str) -> None:
    with db.engine.begin() as conn:
        ALEMBIC.attributes["connection"] = conn
        try:
            command.upgrade(ALEMBIC, revision)
        finally:
            del ALEMBIC.attributes["connection"]


def when(conn: Connection) -> str:
    """``AT`` as that backend's driver stores a timestamp (SQLite keeps naive UTC text)."""
    if conn.dialect.name == "sqlite":
        return AT.strftime("%Y-%m-%d %H:%M:%S.%f")
    return AT.isoformat()


def insert(conn: Connection, table: str, returning: bool = True, **values) -> int | None:
    """One row by plain SQL; JSON values are written as JSON text."""
    values = {k: json.dumps(v) if isinstance(v, (dict, list)) else v
              for k, v in values.items()}
    sql = (f"INSERT INTO {table} ({', '.join(values)}) "
           f"VALUES ({', '.join(':' + k for k in values)})")
    if returning:
        return conn.execute(text(sql + " RETURNING id"), values).scalar_one()
    conn.execute(text(sql), values)
    return None


def job_row(conn: Connection, **values) -> dict:
    """The columns of ``jobs`` that have no default in the database."""
    base = dict(program="echo", params={"message": "hi"}, cpu=1.0, memory_mb=512, gpu=0,
                gpu_memory_mb=0, priority="normal", owner="alice", team="lab",
                max_retries=1, checkpointable=False, executor="local", state="SUCCEEDED",
                attempt=1, failures=0, cancel_requested=False, created_at=when(conn),
                queued_at=when(conn), events_offset=0)
    return {**base, **values}


def fill_previous(conn: Connection) -> dict:
    """Realistic rows of every kind, in the schema at ``PREVIOUS``; returns their ids."""
    t = when(conn)
    ids = {"admin": insert(conn, "users", name="admin", is_admin=True, disabled=False,
                           created_at=t),
           "alice": insert(conn, "users", name="alice", is_admin=False, disabled=False,
                           created_at=t),
           "default": insert(conn, "teams", name="default", created_at=t),
           "lab": insert(conn, "teams", name="lab", created_at=t, quota_cpu=4.0,
                         quota_memory_mb=8192, quota_jobs=3, quota_rps=2.5)}
    insert(conn, "memberships", False, user_id=ids["admin"], team_id=ids["default"],
           role="admin")
    insert(conn, "memberships", False, user_id=ids["alice"], team_id=ids["lab"],
           role="developer")
    ids["token"] = insert(conn, "api_tokens", user_id=ids["alice"], name="laptop",
                          prefix=SECRET[:12], hash=hashlib.sha256(SECRET.encode()).hexdigest(),
                          scopes=["read", "write"], team=None, priority="high",
                          rate_limit_rps=5.0, created_at=t)
    ids["ingest"] = insert(conn, "jobs", **job_row(
        conn, name="ingest messy", program="llmos.data.program:ingest",
        params={"dataset": "messy", "sources": ["/srv/corpus"]}, started_at=t, ended_at=t,
        scheduled_at=t, node="local", allocation={"cpu": 1.0, "cores": [0]}, pid=4242,
        exit_code=0, events_offset=1234, progress_done=10.0, progress_total=10.0,
        progress_unit="files", progress_info={"documents": 120}))
    ids["waiting"] = insert(conn, "jobs", **job_row(
        conn, name="after ingest", state="PENDING", attempt=0, reason="waiting for job 1"))
    insert(conn, "job_dependencies", False, job_id=ids["waiting"],
           depends_on_id=ids["ingest"])
    for from_state, to_state in ((None, "PENDING"), ("PENDING", "SCHEDULED"),
                                 ("SCHEDULED", "RUNNING"), ("RUNNING", "SUCCEEDED")):
        insert(conn, "job_transitions", job_id=ids["ingest"], from_state=from_state,
               to_state=to_state, reason="test", attempt=1, at=t)
    for step, value in ((1, 2.5), (2, 1.25)):
        insert(conn, "job_metrics", job_id=ids["ingest"], name="loss", value=value, step=step,
               at=t)

    def artifact(name: str, kind: str) -> int:
        return insert(conn, "artifacts", sha256=SHA[name], name=name, kind=kind, size=22,
                      encrypted=name == "raw.txt", job_id=ids["ingest"], team="lab",
                      owner="alice", created_at=t)

    for name, kind in (("raw.txt", "text"), ("clean.txt", "text"),
                       ("train-00000.parquet", "dataset-shard"), ("report.json", "report"),
                       ("config.json", "model-file")):
        ids[name] = artifact(name, kind)
    insert(conn, "artifact_parents", False, artifact_id=ids["clean.txt"],
           parent_id=ids["raw.txt"])
    ids["messy"] = insert(conn, "datasets", name="messy", owner="alice", team="lab",
                          created_at=t)
    shard = {"artifact_id": ids["train-00000.parquet"], "split": "train", "rows": 120,
             "text_bytes": 9000, "sha256": SHA["train-00000.parquet"],
             "name": "train-00000.parquet"}
    ids["messy:1"] = insert(conn, "dataset_versions", dataset_id=ids["messy"], version=1,
                            content_hash="c" * 64, shards=[shard],
                            schema={"id": "string", "text": "string", "lang": "string"},
                            stats={"documents": 120, "removed": {"exact_dup": 7}},
                            lineage={"sources": ["/srv/corpus"]},
                            report_artifact_id=ids["report.json"], job_id=ids["ingest"],
                            created_at=t)
    ids["bert"] = insert(conn, "models", name="bert-small", team="lab", owner="alice",
                         created_at=t)
    files = [{"path": "config.json", "sha256": SHA["config.json"], "size": 22,
              "artifact_id": ids["config.json"]}]
    for number in (1, 2):
        ids[f"bert:{number}"] = insert(
            conn, "model_versions", model_id=ids["bert"], version=number,
            architecture="BertModel", task="encoder", parameters=4_386_560, size_bytes=22,
            dtype="float32", context_length=512, info=INFO, files=files,
            lineage={"source": {"kind": "huggingface"}}, metrics={"eval": {"loss": 0.5}},
            card=f"# bert-small (version {number})", job_id=ids["ingest"], owner="alice",
            created_at=t)
    insert(conn, "model_aliases", False, model_id=ids["bert"], alias="production",
           version_id=ids["bert:1"], updated_at=t)
    fill_audit(conn)
    return ids


def fill_audit(conn: Connection) -> None:
    """Two chained audit records and the head, hashed as the app hashes them."""
    prev = "0" * 64
    for actor, action in (("system", "bootstrap"), ("alice", "POST /v1/jobs")):
        digest = record_hash(prev, AT, actor, action, "/v1/jobs", "201", "req-1",
                             {"token": SECRET[:12]})
        insert(conn, "audit_log", at=when(conn), actor=actor, action=action,
               target="/v1/jobs", outcome="201", request_id="req-1",
               detail={"token": SECRET[:12]}, prev_hash=prev, hash=digest)
        prev = digest
    insert(conn, "audit_head", False, id=1, hash=prev, count=2)


def test_the_previous_schema_with_rows_of_every_kind_upgrades_to_head(empty, tmp_path):
    migrate(empty, PREVIOUS)
    with empty.engine.begin() as conn:
        ids = fill_previous(conn)
    migrate(empty, "head")

    with empty.engine.connect() as conn:  # the upgraded schema is the models' schema
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    with empty.session() as s:
        job = s.get(Job, ids["ingest"])
        assert (job.name, job.state, job.owner, job.team, job.exit_code) == (
            "ingest messy", "SUCCEEDED", "alice", "lab", 0)
        assert job.params == {"dataset": "messy", "sources": ["/srv/corpus"]}
        assert job.allocation == {"cpu": 1.0, "cores": [0]} and job.started_at == AT
        assert (job.progress_unit, job.progress_info) == ("files", {"documents": 120})
        assert [t.to_state for t in job.transitions] == [
            "PENDING", "SCHEDULED", "RUNNING", "SUCCEEDED"]
        assert s.get(Job, ids["waiting"]).depends_on == [ids["ingest"]]
        clean = s.get(Artifact, ids["clean.txt"])
        assert clean.parents == [ids["raw.txt"]] and s.get(Artifact, ids["raw.txt"]).encrypted
        assert (clean.sha256, clean.team, clean.owner) == (SHA["clean.txt"], "lab", "alice")
        dataset = s.scalars(select(Dataset).where(Dataset.name == "messy")).one()
        (v1,) = dataset.versions
        assert (v1.version, v1.stats["removed"], v1.report_artifact_id) == (
            1, {"exact_dup": 7}, ids["report.json"])
        assert v1.shards[0]["artifact_id"] == ids["train-00000.parquet"]
        model = s.scalars(select(Model).where(Model.name == "bert-small")).one()
        assert [v.version for v in model.versions] == [1, 2]
        assert {a.alias: a.version.version for a in model.aliases} == {"production": 1}
        assert ModelInfo.from_dict(model.versions[0].info).context_length == 512
        assert s.get(Team, ids["lab"]).quota_rps == 2.5
    _the_app_reads_identities_and_audit(empty, ids, tmp_path)
    _new_rows_join_the_old_ones(empty, ids, tmp_path)


def audit_log(db: Database, home) -> AuditLog:
    """The app's audit log: its key and head file live outside the database."""
    return AuditLog(db, home / "audit.key", home / "audit.head")


def _the_app_reads_identities_and_audit(db: Database, ids: dict, home) -> None:
    tokens = TokenService(db)
    alice = tokens.authenticate(SECRET)
    assert (alice.name, alice.roles, alice.priority) == ("alice", {"lab": Role.DEVELOPER},
                                                         "high")
    admin = Principal(name="admin", user_id=ids["admin"], is_admin=True)
    teams = IdentityService(db, tokens).teams(admin)
    assert {t.name: {m.user.name: m.role for m in t.memberships} for t in teams} == {
        "default": {"admin": "admin"}, "lab": {"alice": "developer"}}
    # The old unkeyed chain is checked once and adopted: the keyed chain continues from it.
    verdict = audit_log(db, home).verify(admin)
    assert (verdict.ok, verdict.records, verdict.message) == (
        True, 2, "2 records, chain intact")
    assert '"legacy":2' in (home / "audit.head").read_text().splitlines()[0]


def _new_rows_join_the_old_ones(db: Database, ids: dict, home) -> None:
    """The app keeps writing after the upgrade: new ids follow the old ones, the chain
    grows from the old head, and the tables new in head can point at old rows."""
    with db.session() as s:
        job = Job(**{k: v for k, v in job_row(s.connection()).items()
                     if k not in ("created_at", "queued_at")})
        s.add(job)
        s.flush()
        assert job.id > ids["waiting"]
        if "deployments" in inspect(db.engine).get_table_names():
            s.add(Deployment(name="search", team="lab", owner="alice", model="bert-small",
                             ref="production", version_id=ids["bert:1"], engine="torch",
                             replicas=1, max_batch=8, max_queue=64, priority="normal",
                             pool="lab-pool"))
    admin = Principal(name="admin", user_id=ids["admin"], is_admin=True)
    audit = audit_log(db, home)
    audit.append("alice", "POST /v1/deployments", "/v1/deployments", "201")
    assert audit.verify(admin).message == "3 records, chain intact"


def test_rows_from_before_identities_belong_to_the_default_team_after_upgrade(empty):
    """0005 gave the jobs, datasets and artifacts of a store made before users existed to
    the team and administrator that the first start creates."""
    migrate(empty, BEFORE_IDENTITIES)
    with empty.engine.begin() as conn:
        job = insert(conn, "jobs", **{k: v for k, v in job_row(conn, owner="local").items()
                                      if k != "team"})
        art = insert(conn, "artifacts", sha256=SHA["raw.txt"], name="raw.txt", kind="text",
                     size=22, encrypted=False, job_id=job, created_at=when(conn))
        insert(conn, "datasets", name="old", owner="local", created_at=when(conn))
    migrate(empty, "head")
    with empty.session() as s:
        assert (s.get(Job, job).owner, s.get(Job, job).team) == ("admin", "default")
        assert (s.get(Artifact, art).team, s.get(Artifact, art).job_id) == ("default", job)
        old = s.scalars(select(Dataset).where(Dataset.name == "old")).one()
        assert (old.owner, old.team) == ("admin", "default")
    first = IdentityService(empty, TokenService(empty)).bootstrap()
    assert (first.user, first.team) == ("admin", "default")
    owner = TokenService(empty).authenticate(first.token)
    assert owner.roles == {"default": Role.ADMIN}  # who now owns the old rows
    with empty.session() as s:
        assert s.scalars(select(User.name)).all() == ["admin"]
        assert len(s.scalars(select(ApiToken)).all()) == 1
        assert s.scalar(select(ModelVersion.id)) is None  # tables added later start empty
