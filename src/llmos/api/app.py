"""The FastAPI application over a built llmos system: it mounts the routers, and its
lifespan starts the system and closes it. Building the system is not the API's job
(``llmos/system.py`` does it)."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from llmos import __version__
from llmos.api import (
    artifacts,
    audit,
    datasets,
    deployments,
    errors,
    events,
    gate,
    identity,
    jobs,
    lineage,
    monitor,
    openai,
    optimize,
    pipelines,
    registry,
    training,
    tune,
    web,
)
from llmos.api import system as system_routes
from llmos.system import System

# The services the routers find on ``app.state`` (by these names).
SERVICES = ("daemon", "tokens", "identity", "throttle", "jobs", "artifacts", "datasets",
            "registry", "train", "workers", "deployments", "controller", "metrics", "gateway",
            "audit", "pipelines", "lineage", "sampler")


def create_app(system: System) -> FastAPI:
    """The llmos API over ``system``. Starting the app (its lifespan) starts the system's
    daemon and serving; stopping it closes the system."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        system.start()
        try:
            yield
        finally:
            await system.close()

    app = FastAPI(
        title="llmos",
        version=__version__,
        description="An operating system for AI workloads: jobs, artifacts, datasets, "
        "resources. Every route but /healthz needs an API token (Authorization: Bearer).",
        lifespan=lifespan,
    )
    app.state.system = system
    for name in SERVICES:
        setattr(app.state, name, getattr(system, name))
    app.state.signals = system.signals  # the gate feeds the security alerts
    errors.install(app)
    gate.install(app)
    app.include_router(system_routes.router)
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
    app.include_router(optimize.router)
    app.include_router(deployments.router)
    app.include_router(deployments.workers_router)
    app.include_router(openai.router)
    app.include_router(pipelines.router)
    app.include_router(tune.router)
    app.include_router(lineage.router)
    app.include_router(audit.router)
    app.include_router(monitor.router)
    app.include_router(events.router)
    app.include_router(web.router)
    return app
