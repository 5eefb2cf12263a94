"""The composition root: one llmos system — the store, every service, the daemon, the
serving controller and the pipeline engine — built once from the settings, outside any
face.

`llmos up` builds it and hands it to the API (``create_app(system)``), which only mounts
routes over it; tests and benchmarks get theirs the same way (a live `llmos up`, or
``System(settings)`` in process). The order of building lives here only: the store
opens (and migrates) first; the daemon mints job tokens through the token service;
identity reloads the daemon's quotas when they change; the artifact store is handed its
cipher; serving sits on the model registry and the job service. On an empty store the
build creates the administrator and hands its one-time token to ``on_bootstrap``.

:meth:`System.start` starts the control loop, the serving controller, the pipeline
engine and the tuning driver; :meth:`System.close` stops them, closes the gateway's
connections and the store.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from llmos.config import Settings
from llmos.data.datasets import DatasetService
from llmos.kernel.daemon import Daemon
from llmos.kernel.resources import NodeCapacity
from llmos.kernel.service import JobService
from llmos.models.registry import ModelRegistry
from llmos.monitor.alert_checks import LatencyWindow
from llmos.monitor.alerts import AlertEngine, FiringCollector
from llmos.monitor.events import EventLog
from llmos.monitor.metrics import Metrics, Resources
from llmos.monitor.sampler import Sampler
from llmos.monitor.signals import Signals
from llmos.optimize.compare import CompareService
from llmos.optimize.service import CompressService
from llmos.optimize.tune import TuneService
from llmos.optimize.tune_storage import forget as forget_tune_storage
from llmos.pipelines import PipelineService
from llmos.pipelines.lineage import LineageService
from llmos.security.artifacts import ArtifactService
from llmos.security.audit import AuditLog
from llmos.security.crypto import Cipher, KeyChecks, keyring_of
from llmos.security.identity import Bootstrap, IdentityService, serving_rates
from llmos.security.throttle import FailureThrottle
from llmos.security.tokens import TokenService
from llmos.serve.controller import Controller, Workers
from llmos.serve.deployments import DeploymentService
from llmos.serve.gateway import Gateway
from llmos.serve.limits import Limits, TeamRates
from llmos.store import ArtifactStore, Database, open_database
from llmos.train.service import TrainService

log = logging.getLogger("llmos.daemon")


class System:
    """Every service of one llmos daemon, wired together and named as the API uses them."""

    def __init__(self, settings: Settings, node: NodeCapacity | None = None,
                 api_url: str | None = None,
                 on_bootstrap: Callable[[Bootstrap], None] | None = None):
        """Open the store and build every service; on an empty store, create the
        administrator and hand the one-time token to ``on_bootstrap``. Nothing runs yet."""
        # LLMOS_HOME (store, keys, credentials, job folders) is the daemon's user's alone,
        # whatever the umask: jobs see only their own folder (kernel/executors/sandbox.py).
        settings.home_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(settings.home_dir, 0o700)
        self.settings = settings
        self.db: Database = open_database(settings.db_url)
        try:
            # The audit key is confirmed first: a wrong one refuses the start (CryptoError).
            self.audit = AuditLog(self.db, settings.audit_key_path, settings.audit_head_path)
            self._build_core(node, api_url)
            self._build_serving()
            self._build_pipelines()
            self._build_sampler()
            self._build_monitor()
            self._bootstrap(on_bootstrap)
        except BaseException:
            self.db.close()
            raise

    def _build_core(self, node: NodeCapacity | None, api_url: str | None) -> None:
        """Identities, the kernel, artifacts, datasets, models and training."""
        settings, db = self.settings, self.db
        self.tokens = TokenService(db)
        self.daemon = Daemon(settings, db, api_url=api_url, node=node,
                             job_token=self.tokens.mint_for_job)
        self.identity = IdentityService(db, self.tokens,
                                        on_quota_change=self.daemon.reload_quotas)
        self.throttle = FailureThrottle(settings.auth_free_failures, settings.auth_max_delay_s)
        self.jobs = JobService(self.daemon)
        cipher = Cipher(lambda: keyring_of(settings), KeyChecks(db))
        if settings.encryption_key or settings.key_path.exists():
            cipher.keyring  # noqa: B018  a wrong key for a known id refuses the start here
        store = ArtifactStore(settings.artifacts_dir, cipher)
        self.artifacts = ArtifactService(db, store, settings.max_upload_mb << 20)
        self.artifacts.rename_legacy_sealed()
        self.datasets = DatasetService(self.jobs, self.artifacts)
        self.registry = ModelRegistry(self.artifacts, settings.home_dir / "models")
        self.train = TrainService(self.jobs, self.registry, self.datasets)
        self.compress = CompressService(self.jobs, self.registry, self.datasets)
        self.compare = CompareService(self.jobs, self.registry, self.datasets)

    def _build_serving(self) -> None:
        """Deployments, their workers' controller, the metrics and the gateway."""
        self.workers = Workers()
        self.deployments = DeploymentService(self.db, self.registry,
                                             on_change=lambda: self.controller.wake())
        self.controller = Controller(self.deployments, self.jobs, self.workers)
        self.metrics = Metrics(self.workers, self.daemon)
        rates = TeamRates(lambda: serving_rates(self.db))
        self.gateway = Gateway(self.deployments, self.registry, self.workers, self.controller,
                               Limits(rates), self.metrics)

    def _build_pipelines(self) -> None:
        """Pipelines over every service above (their steps are those services' verbs)."""
        self.pipelines = PipelineService(self)
        self.lineage = LineageService(self.db, self.registry, self.datasets, self.deployments)
        # Tuning studies: their driver submits trials as jobs, woken when jobs end.
        self.tune = TuneService(self)

    def _build_sampler(self) -> None:
        """The resource sampler (jobs, this node, GPUs) and its /metrics families."""
        self.sampler = Sampler(self.settings, self.daemon, self.db)
        self.metrics.add_collector(Resources(self.sampler, self.db))

    def _build_monitor(self) -> None:
        """The event log (hooks on the store's sessions: changed rows become events in
        their own transaction), the gate's security signals (``app.state.signals``) and
        the alert engine, whose rules file refuses the start when malformed."""
        self.events = EventLog(self.db)
        self.events.install()
        self.signals = Signals()
        self.alerts = AlertEngine(self.settings, self.db, self.events, self.signals,
                                  sampler=self.sampler,
                                  latency=LatencyWindow(self.metrics.latency))
        self.metrics.add_collector(FiringCollector(self.alerts))

    def _bootstrap(self, on_bootstrap: Callable[[Bootstrap], None] | None) -> None:
        first = self.identity.bootstrap()
        if first is not None:
            self.audit.append("system", "bootstrap", f"user {first.user}", "created")
            if on_bootstrap is not None:
                on_bootstrap(first)

    def start(self) -> None:
        """Start the daemon's control loop (recovering jobs first), then serving and the
        pipeline engine."""
        self.daemon.start()
        self.controller.start()
        self.pipelines.engine.start()
        self.tune.driver.start()
        self.sampler.start()
        self.alerts.start()

    async def close(self) -> None:
        """Stop serving and the daemon (running jobs stopped or left, as the settings
        say), then close the store. Async: the gateway's connections close on the event
        loop that used them."""
        self.pipelines.engine.stop()
        self.tune.driver.stop()
        self.sampler.stop()
        self.alerts.stop()
        self.controller.stop()
        await self.gateway.close()
        self.daemon.shutdown()
        forget_tune_storage(self.db)
        self.db.close()
        log.info("llmos daemon stopped cleanly")
