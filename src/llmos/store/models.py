"""The metadata tables (SQLAlchemy 2 declarative models).

The schema itself is created and changed only by the Alembic migrations in
``store/migrations``; these classes must match them (a test checks).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from llmos.store.base import Base, UTCDateTime, utcnow
# the tables of who may do what, kept apart by idea (re-exported: one schema, one import)
from llmos.store.identity import (  # noqa: F401
    ApiToken,
    AuditHead,
    AuditRecord,
    KeyCheck,
    Membership,
    Team,
    User,
)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str | None] = mapped_column(String(200))
    program: Mapped[str] = mapped_column(String(1000))
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    cpu: Mapped[float] = mapped_column(Float)
    memory_mb: Mapped[int] = mapped_column(Integer)
    gpu: Mapped[int] = mapped_column(Integer, default=0)
    gpu_memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    # A share of one GPU by its memory (MB), instead of whole GPUs (Request.gpu_share_mb).
    gpu_share_mb: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    priority: Mapped[str] = mapped_column(String(16), default="normal")
    owner: Mapped[str] = mapped_column(String(200), default="local")
    team: Mapped[str | None] = mapped_column(String(200))
    max_retries: Mapped[int] = mapped_column(Integer, default=0)
    timeout_s: Mapped[float | None] = mapped_column(Float)
    checkpointable: Mapped[bool] = mapped_column(Boolean, default=False)
    executor: Mapped[str] = mapped_column(String(50), default="local")
    # Folders on the host the job may read (dataset ingest, model import, its program
    # file), fixed at submit from its submitter's rights: ["/"] for an unrestricted
    # administrator; null (rows older than this column) means the daemon's ingest roots.
    read_roots: Mapped[list | None] = mapped_column(JSON)
    # Placement: node labels it needs; the group it spreads over nodes with, or (anti-
    # affinity) keeps apart from.
    node_labels: Mapped[dict | None] = mapped_column(JSON)
    spread_group: Mapped[str | None] = mapped_column(String(200))
    spread: Mapped[bool] = mapped_column(Boolean, default=False)
    anti_affinity: Mapped[bool] = mapped_column(Boolean, default=False)
    # May run over several nodes as a gang (one rank per node) when larger than any node.
    multi_node: Mapped[bool | None] = mapped_column(Boolean, default=False)

    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    scheduled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    node: Mapped[str | None] = mapped_column(String(200))
    allocation: Mapped[dict | None] = mapped_column(JSON)
    pid: Mapped[int | None] = mapped_column(Integer)
    pid_started: Mapped[float | None] = mapped_column(Float)
    # The executor's own reference to the running attempt (kernel/executors/base.Handle).
    handle: Mapped[dict | None] = mapped_column(JSON)
    # Its newest checkpoint stored as an artifact (so another node can resume it).
    checkpoint_artifact: Mapped[int | None] = mapped_column(Integer)
    # When the scheduling policy last promoted it while it waited (Tiresias' starvation
    # guard): the policy's counters of its service and waits start again from there.
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    signal: Mapped[int | None] = mapped_column(Integer)
    events_offset: Mapped[int] = mapped_column(BigInteger, default=0)
    progress_done: Mapped[float | None] = mapped_column(Float)
    progress_total: Mapped[float | None] = mapped_column(Float)
    progress_unit: Mapped[str | None] = mapped_column(String(50))
    progress_info: Mapped[dict | None] = mapped_column(JSON)
    # What the program returned (JSON, at most 64 kB), once it succeeded: a pipeline step's
    # outputs come from here (``pipelines/``).
    result: Mapped[dict | list | None] = mapped_column(JSON)

    transitions: Mapped[list[JobTransition]] = relationship(
        back_populates="job", order_by="JobTransition.id", cascade="all, delete-orphan"
    )
    dependencies: Mapped[list[JobDependency]] = relationship(
        foreign_keys="JobDependency.job_id", cascade="all, delete-orphan"
    )

    @property
    def depends_on(self) -> list[int]:
        return [d.depends_on_id for d in self.dependencies]


class JobDependency(Base):
    __tablename__ = "job_dependencies"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    depends_on_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )


class JobTransition(Base):
    __tablename__ = "job_transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    job: Mapped[Job] = relationship(back_populates="transitions")


class JobMetric(Base):
    __tablename__ = "job_metrics"
    __table_args__ = (Index("ix_job_metrics_job_name", "job_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    value: Mapped[float] = mapped_column(Float)
    step: Mapped[int | None] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Artifact(Base):
    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(500))
    kind: Mapped[str] = mapped_column(String(100), default="file")
    size: Mapped[int] = mapped_column(BigInteger)
    encrypted: Mapped[bool] = mapped_column(Boolean, default=False)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    team: Mapped[str | None] = mapped_column(String(100), index=True)
    owner: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    parent_links: Mapped[list[ArtifactParent]] = relationship(
        foreign_keys="ArtifactParent.artifact_id", cascade="all, delete-orphan"
    )

    @property
    def parents(self) -> list[int]:
        return [p.parent_id for p in self.parent_links]


class ArtifactParent(Base):
    __tablename__ = "artifact_parents"

    artifact_id: Mapped[int] = mapped_column(
        ForeignKey("artifacts.id", ondelete="CASCADE"), primary_key=True
    )
    parent_id: Mapped[int] = mapped_column(
        ForeignKey("artifacts.id", ondelete="RESTRICT"), primary_key=True
    )


class Dataset(Base):
    """A named dataset; its content lives in immutable versions."""

    __tablename__ = "datasets"
    # Names are unique within a team, not across teams (``security/names.py``).
    __table_args__ = (Index("ux_datasets_name_team", "name", "team", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str] = mapped_column(String(200), default="local")
    team: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    versions: Mapped[list[DatasetVersion]] = relationship(
        back_populates="dataset", order_by="DatasetVersion.version", cascade="all, delete-orphan"
    )


class DatasetVersion(Base):
    """One immutable version: Parquet shards (artifacts), schema, statistics, lineage."""

    __tablename__ = "dataset_versions"
    __table_args__ = (Index("ux_dataset_versions", "dataset_id", "version", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    shards: Mapped[list] = mapped_column(JSON)  # [{"artifact_id", "split", "rows", "bytes"}]
    schema: Mapped[dict] = mapped_column(JSON)
    stats: Mapped[dict] = mapped_column(JSON)
    lineage: Mapped[dict] = mapped_column(JSON)
    report_artifact_id: Mapped[int | None] = mapped_column(
        ForeignKey("artifacts.id", ondelete="RESTRICT"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    dataset: Mapped[Dataset] = relationship(back_populates="versions")


# -- the model registry (models/registry.py) ------------------------------------------------


class Model(Base):
    """A named model; its weights live in immutable, numbered versions."""

    __tablename__ = "models"
    __table_args__ = (Index("ux_models_name_team", "name", "team", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    team: Mapped[str | None] = mapped_column(String(100), index=True)
    owner: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model", order_by="ModelVersion.version", cascade="all, delete-orphan")
    aliases: Mapped[list[ModelAlias]] = relationship(
        back_populates="model", order_by="ModelAlias.alias", cascade="all, delete-orphan")


class ModelVersion(Base):
    """One immutable version: files (artifacts), what they hold, lineage, metrics, card."""

    __tablename__ = "model_versions"
    __table_args__ = (Index("ux_model_versions", "model_id", "version", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    architecture: Mapped[str | None] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(String(50))
    parameters: Mapped[int] = mapped_column(BigInteger)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    dtype: Mapped[str] = mapped_column(String(100))
    context_length: Mapped[int | None] = mapped_column(Integer)
    info: Mapped[dict] = mapped_column(JSON)  # models.ModelInfo.to_dict()
    files: Mapped[list] = mapped_column(JSON)  # [{"path", "sha256", "size", "artifact_id"}]
    lineage: Mapped[dict] = mapped_column(JSON)
    metrics: Mapped[dict] = mapped_column(JSON)
    card: Mapped[str] = mapped_column(Text)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    owner: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    model: Mapped[Model] = relationship(back_populates="versions")


class ModelAlias(Base):
    """A movable name (production, staging ...) for one version of a model."""

    __tablename__ = "model_aliases"

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"),
                                          primary_key=True)
    alias: Mapped[str] = mapped_column(String(50), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id",
                                                       ondelete="RESTRICT"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    model: Mapped[Model] = relationship(back_populates="aliases")
    version: Mapped[ModelVersion] = relationship()


# -- serving (serve/deployments.py) ----------------------------------------------------------


class ServingPool(Base):
    """Serving workers that share one memory budget: each is a service job hosting every
    deployment of the pool, loading models on demand (``serve/residency.py``)."""

    __tablename__ = "serving_pools"
    __table_args__ = (Index("ux_serving_pools_name_team", "name", "team", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    team: Mapped[str | None] = mapped_column(String(100), index=True)
    owner: Mapped[str] = mapped_column(String(200))
    cpu: Mapped[float] = mapped_column(Float)
    memory_mb: Mapped[int] = mapped_column(Integer)
    gpu: Mapped[int] = mapped_column(Integer, default=0)
    budget_mb: Mapped[int] = mapped_column(Integer)  # for resident models
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Deployment(Base):
    """A served model: a name in the OpenAI API, the version it serves now (re-resolved
    when its alias moves), its engine and its pool."""

    __tablename__ = "deployments"
    __table_args__ = (Index("ux_deployments_name_team", "name", "team", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    team: Mapped[str | None] = mapped_column(String(100), index=True)
    owner: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(100))
    ref: Mapped[str] = mapped_column(String(50))  # a version number, "latest" or an alias
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id",
                                                       ondelete="RESTRICT"))
    engine: Mapped[str] = mapped_column(String(50))
    replicas: Mapped[int] = mapped_column(Integer)
    # Autoscaling (serve/autoscale): between min and max replicas from load; null max means
    # fixed at ``replicas``. min 0 scales to zero after ``idle_s`` without requests.
    min_replicas: Mapped[int | None] = mapped_column(Integer)
    max_replicas: Mapped[int | None] = mapped_column(Integer)
    idle_s: Mapped[float | None] = mapped_column(Float)
    # Placement of its workers: node labels they need (zone=edge).
    node_labels: Mapped[dict | None] = mapped_column(JSON)
    # A canary rollout: this share (percent) of requests goes to ``canary_version_id``
    # instead of ``version_id`` (``serve/gateway.py``), until completed or rolled back.
    # (No foreign key: SQLite cannot add one to a table; the registry refuses to delete a
    # version a deployment names, canary included.)
    canary_version_id: Mapped[int | None] = mapped_column(Integer)
    canary_weight: Mapped[int] = mapped_column(Integer, default=0)
    max_batch: Mapped[int] = mapped_column(Integer)
    max_queue: Mapped[int] = mapped_column(Integer)  # waiting requests; more get 429
    priority: Mapped[str] = mapped_column(String(16))
    pool: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    version: Mapped[ModelVersion] = relationship()


class Node(Base):
    """A machine jobs run on, as the daemon last saw it through its executor: what it
    offers, its labels, where it is, and whether it takes work (ready, draining, lost)."""

    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    node_id: Mapped[str | None] = mapped_column(String(200))  # the engine's id (Ray's)
    executor: Mapped[str] = mapped_column(String(50))
    address: Mapped[str | None] = mapped_column(String(200))
    labels: Mapped[dict] = mapped_column(JSON, default=dict)
    capacity: Mapped[dict] = mapped_column(JSON, default=dict)  # cpu, memory_mb, gpu
    free: Mapped[dict] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    drain_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# -- pipelines (pipelines/) -------------------------------------------------------------------


class Pipeline(Base):
    """A named data-flow graph of steps (its validated spec), and its triggers."""

    __tablename__ = "pipelines"
    __table_args__ = (Index("ux_pipelines_name_team", "name", "team", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    team: Mapped[str | None] = mapped_column(String(100), index=True)
    owner: Mapped[str] = mapped_column(String(200))
    # The owner applied it with a system administrator's unrestricted token: its triggered
    # runs may read what such a token may (else: the owner's rights in its team only).
    system_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    spec: Mapped[dict] = mapped_column(JSON)  # pipelines.spec.PipelineSpec, as validated
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PipelineRun(Base):
    """One run of a pipeline: its parameters, what started it, and how it went."""

    __tablename__ = "pipeline_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"),
                                             index=True)
    team: Mapped[str | None] = mapped_column(String(100), index=True)
    owner: Mapped[str] = mapped_column(String(200))
    system_admin: Mapped[bool] = mapped_column(Boolean, default=False)  # as on Pipeline
    spec: Mapped[dict] = mapped_column(JSON)  # the spec this run follows (a snapshot)
    params: Mapped[dict] = mapped_column(JSON)  # every parameter, defaults filled in
    no_cache: Mapped[bool] = mapped_column(Boolean, default=False)
    trigger: Mapped[str] = mapped_column(String(300))  # "manual", "dataset ...", "cron ..."
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    pipeline: Mapped[Pipeline] = relationship()
    steps: Mapped[list[PipelineStep]] = relationship(
        back_populates="run", order_by="PipelineStep.id", cascade="all, delete-orphan")


class PipelineStep(Base):
    """One step of a run (one element of a ``map`` is a step of its own): its resolved
    inputs, cache key, the job that ran it or the run it was cached from, its outputs."""

    __tablename__ = "pipeline_steps"
    __table_args__ = (Index("ux_pipeline_steps", "run_id", "name", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("pipeline_runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))  # "train", or "train[2]" in a map
    step: Mapped[str] = mapped_column(String(100))  # its name in the spec
    index: Mapped[int | None] = mapped_column(Integer)  # its element in a map
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"),
                                               index=True)
    cache_key: Mapped[str | None] = mapped_column(String(64), index=True)
    cached_from: Mapped[int | None] = mapped_column(Integer)  # the step row it reused
    inputs: Mapped[dict | None] = mapped_column(JSON)
    outputs: Mapped[dict | None] = mapped_column(JSON)
    detail: Mapped[dict | None] = mapped_column(JSON)  # a control step's own state
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    run: Mapped[PipelineRun] = relationship(back_populates="steps")


class PipelineTrigger(Base):
    """What starts a pipeline on its own: a new version of a dataset, or a cron schedule;
    and what to do when a run is still going (skip, queue, cancel the older)."""

    __tablename__ = "pipeline_triggers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"),
                                             index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "dataset" | "cron"
    target: Mapped[str] = mapped_column(String(200))  # the dataset's name, or the cron line
    params: Mapped[dict] = mapped_column(JSON)  # the runs' parameters
    overlap: Mapped[str] = mapped_column(String(16))  # "skip" | "queue" | "cancel"
    # the dataset version last seen, or the last time the schedule fired
    last_version: Mapped[int | None] = mapped_column(Integer)
    last_fired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    pipeline: Mapped[Pipeline] = relationship()


# -- tuning (optimize/tune*) ------------------------------------------------------------------


class TuneStudy(Base):
    """A tuning study as llmos sees it: whose it is, its recipe and how it went. Its trials
    live in Optuna's own tables (``optuna_study`` names the study there); ``best`` is kept
    here when it ends."""

    __tablename__ = "tune_studies"
    __table_args__ = (Index("ux_tune_studies_name_team", "name", "team", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    team: Mapped[str | None] = mapped_column(String(100), index=True)
    owner: Mapped[str] = mapped_column(String(200))
    system_admin: Mapped[bool] = mapped_column(Boolean, default=False)  # as on Pipeline
    recipe: Mapped[dict] = mapped_column(JSON)  # optimize.tune_recipe.TuneRecipe, validated
    # RUNNING | SUCCEEDED | FAILED | STOPPED
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    optuna_study: Mapped[str] = mapped_column(String(200))
    # {number, value, params, job, model, version} of the best trial, once known
    best: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# -- monitoring (monitor/) ----------------------------------------------------------------


class UsageSample(Base):
    """What a running job's process tree, or a node, or one GPU used, measured by the
    sampler (``monitor/sampler.py``). ``kind``: job | node | gpu; ``subject``: the job's id,
    the node's name, or ``node/gpu-index``. Raw samples (``resolution_s`` = the sampling
    interval) are averaged into coarser rows (60 s, then 600 s) as they age, so the
    history stays bounded."""

    __tablename__ = "usage_samples"
    __table_args__ = (Index("ix_usage_samples_subject", "kind", "subject", "resolution_s",
                            "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(8))
    subject: Mapped[str] = mapped_column(String(200))
    team: Mapped[str | None] = mapped_column(String(100), index=True)  # a job's team
    resolution_s: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    cpu: Mapped[float | None] = mapped_column(Float)  # cores busy
    memory_mb: Mapped[float | None] = mapped_column(Float)  # resident
    read_bytes_s: Mapped[float | None] = mapped_column(Float)
    write_bytes_s: Mapped[float | None] = mapped_column(Float)
    gpu_util: Mapped[float | None] = mapped_column(Float)  # 0..1
    gpu_memory_mb: Mapped[float | None] = mapped_column(Float)


class Event(Base):
    """One change of a job, deployment, model, dataset or node, or an alert firing or
    resolving, in the order it happened (``id`` is the stream's cursor: ``/v1/events``).
    ``team`` decides who sees it (None: administrators only)."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_kind_id", "kind", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(20))  # job|deployment|model|dataset|node|alert
    subject: Mapped[str] = mapped_column(String(200))  # its id or name
    action: Mapped[str] = mapped_column(String(50))  # created | state | firing | resolved ...
    team: Mapped[str | None] = mapped_column(String(100), index=True)
    state: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[dict | None] = mapped_column(JSON)
