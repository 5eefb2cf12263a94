"""The FastAPI application: builds the services, starts the daemon, mounts the routers."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from llmos import __version__
from llmos.api import artifacts, audit, datasets, errors, jobs, system
from llmos.config import Settings, get_settings
from llmos.data.datasets import DatasetService
from llmos.kernel.daemon import Daemon
from llmos.kernel.resources import NodeCapacity
from llmos.kernel.service import JobService
from llmos.security.audit import AuditLog
from llmos.security.crypto import keyring_of
from llmos.store import ArtifactStore, open_database
from llmos.store.artifact_service import ArtifactService

log = logging.getLogger("llmos.daemon")


def create_app(settings: Settings | None = None, node: NodeCapacity | None = None,
               api_url: str | None = None) -> FastAPI:
    """The llmos API. Starting it (its lifespan) opens the store and starts the daemon."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings.home_dir.mkdir(parents=True, exist_ok=True)
        db = open_database(settings.db_url)
        daemon = Daemon(settings, db, api_url=api_url, node=node)
        app.state.daemon = daemon
        app.state.jobs = JobService(daemon)
        app.state.artifacts = ArtifactService(
            db, ArtifactStore(settings.artifacts_dir, keyring=lambda: keyring_of(settings)),
            settings.max_upload_mb << 20)
        app.state.datasets = DatasetService(app.state.jobs, app.state.artifacts)
        app.state.audit = AuditLog(db)
        daemon.start()
        try:
            yield
        finally:
            daemon.shutdown()
            db.close()
            log.info("llmos daemon stopped cleanly")

    app = FastAPI(
        title="llmos",
        version=__version__,
        description="An operating system for AI workloads: jobs, artifacts, datasets, resources.",
        lifespan=lifespan,
    )
    errors.install(app)
    audit.install(app)
    app.include_router(system.router)
    app.include_router(jobs.router)
    app.include_router(artifacts.router)
    app.include_router(artifacts.keys_router)
    app.include_router(datasets.router)
    app.include_router(audit.router)
    return app
