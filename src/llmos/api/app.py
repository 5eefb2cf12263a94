"""The FastAPI application: builds the services, starts the daemon, mounts the routers."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import Callable

from fastapi import FastAPI
from sqlalchemy import select

from llmos import __version__
from llmos.api import (
    artifacts,
    audit,
    datasets,
    deployments,
    errors,
    gate,
    identity,
    jobs,
    openai,
    registry,
    system,
    training,
)
from llmos.config import Settings, get_settings
from llmos.data.datasets import DatasetService
from llmos.kernel.daemon import Daemon
from llmos.kernel.resources import NodeCapacity
from llmos.kernel.service import JobService
from llmos.models.registry import ModelRegistry
from llmos.monitor.metrics import Metrics
from llmos.security.audit import AuditLog
from llmos.security.crypto import keyring_of
from llmos.security.identity import Bootstrap, IdentityService
from llmos.security.throttle import FailureThrottle
from llmos.security.tokens import TokenService
from llmos.serve.controller import Controller, Workers
from llmos.serve.deployments import DeploymentService
from llmos.serve.gateway import Gateway
from llmos.serve.limits import Limits
from llmos.store import ArtifactStore, open_database
from llmos.store.artifact_service import ArtifactService
from llmos.store.models import Team
from llmos.train.service import TrainService

log = logging.getLogger("llmos.daemon")


def _serving(app: FastAPI, db, daemon: Daemon) -> None:
    """Deployments, their workers' controller, the gateway, and the metrics."""
    state = app.state
    state.workers = Workers()
    state.deployments = DeploymentService(db, state.registry,
                                          on_change=lambda: state.controller.wake())
    state.controller = Controller(state.deployments, state.jobs, state.workers)
    state.metrics = Metrics(state.workers, daemon)
    state.gateway = Gateway(state.deployments, state.registry, state.workers, state.controller,
                            Limits(TeamRates(db)), state.metrics)


class TeamRates:
    """Each team's serving quota (requests per second), read at most every few seconds."""

    def __init__(self, db, every_s: float = 5.0):
        self.db, self.every_s = db, every_s
        self._rates: dict[str, float | None] = {}
        self._at = 0.0

    def __call__(self, team: str) -> float | None:
        if time.monotonic() - self._at > self.every_s:
            with self.db.session() as s:
                self._rates = {t.name: t.quota_rps for t in s.scalars(select(Team))}
            self._at = time.monotonic()
        return self._rates.get(team)


def create_app(settings: Settings | None = None, node: NodeCapacity | None = None,
               api_url: str | None = None,
               on_bootstrap: Callable[[Bootstrap], None] | None = None) -> FastAPI:
    """The llmos API. Starting it (its lifespan) opens the store and starts the daemon; on
    an empty store it first creates the administrator and hands the one-time token to
    ``on_bootstrap``."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings.home_dir.mkdir(parents=True, exist_ok=True)
        db = open_database(settings.db_url)
        tokens = TokenService(db)
        daemon = Daemon(settings, db, api_url=api_url, node=node, job_token=tokens.mint_for_job)
        app.state.daemon = daemon
        app.state.tokens = tokens
        app.state.identity = IdentityService(db, tokens, on_quota_change=daemon.reload_quotas)
        app.state.throttle = FailureThrottle(settings.auth_free_failures,
                                             settings.auth_max_delay_s)
        app.state.jobs = JobService(daemon)
        app.state.artifacts = ArtifactService(
            db, ArtifactStore(settings.artifacts_dir, keyring=lambda: keyring_of(settings)),
            settings.max_upload_mb << 20)
        app.state.datasets = DatasetService(app.state.jobs, app.state.artifacts)
        app.state.registry = ModelRegistry(app.state.artifacts, settings.home_dir / "models")
        app.state.train = TrainService(app.state.jobs, app.state.registry, app.state.datasets)
        _serving(app, db, daemon)
        app.state.audit = AuditLog(db)
        first = app.state.identity.bootstrap()
        if first is not None:
            app.state.audit.append("system", "bootstrap", f"user {first.user}", "created")
            if on_bootstrap is not None:
                on_bootstrap(first)
        daemon.start()
        app.state.controller.start()
        try:
            yield
        finally:
            app.state.controller.stop()
            await app.state.gateway.close()
            daemon.shutdown()
            db.close()
            log.info("llmos daemon stopped cleanly")

    app = FastAPI(
        title="llmos",
        version=__version__,
        description="An operating system for AI workloads: jobs, artifacts, datasets, "
        "resources. Every route but /healthz needs an API token (Authorization: Bearer).",
        lifespan=lifespan,
    )
    errors.install(app)
    gate.install(app)
    app.include_router(system.router)
    app.include_router(identity.auth_router)
    app.include_router(identity.users_router)
    app.include_router(identity.teams_router)
    app.include_router(identity.tokens_router)
    app.include_router(jobs.router)
    app.include_router(artifacts.router)
    app.include_router(artifacts.keys_router)
    app.include_router(datasets.router)
    app.include_router(registry.router)
    app.include_router(training.router)
    app.include_router(deployments.router)
    app.include_router(deployments.workers_router)
    app.include_router(openai.router)
    app.include_router(audit.router)
    return app
