"""One settings object for all of llmos.

Every environment variable llmos reads is declared here, with its meaning, under the
prefix ``LLMOS_`` (``LLMOS_HOME``, ``LLMOS_DATABASE_URL``, ...). Nothing else in the code
reads ``os.environ`` for llmos settings.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORT = 8470


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMOS_", extra="ignore")

    home: Path = Field(
        default=Path("~/.llmos"),
        description="Folder holding the embedded database, artifacts and job folders.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the metadata store; default: SQLite in LLMOS_HOME.",
    )
    host: str = Field(default="127.0.0.1", description="Address the daemon listens on.")
    port: int = Field(default=DEFAULT_PORT, description="Port the daemon listens on.")
    url: str | None = Field(
        default=None,
        description="Where the CLI and SDK find the daemon; default http://127.0.0.1:PORT.",
    )
    # Resource overrides (discovery is used when unset).
    cpus: int | None = Field(default=None, ge=1, description="CPUs this node offers to jobs.")
    memory_mb: int | None = Field(default=None, ge=1, description="Memory offered to jobs.")
    reserved_memory_mb: int = Field(
        default=512, ge=0, description="Memory kept back for the OS and the daemon."
    )
    gpus: str | None = Field(
        default=None,
        description="Comma-separated GPU indices to offer (default: all discovered); '' for none.",
    )
    # Daemon behaviour.
    tick_s: float = Field(default=0.25, gt=0, description="Longest sleep of the control loop.")
    cancel_grace_s: float = Field(
        default=5.0, ge=0, description="Seconds between SIGTERM and SIGKILL when stopping a job."
    )
    preempt_grace_s: float = Field(
        default=60.0, ge=0,
        description="Seconds a preempted job has to checkpoint and exit before SIGTERM.",
    )
    shutdown_jobs: Literal["stop", "leave"] = Field(
        default="stop",
        description="On daemon shutdown: 'stop' running jobs and requeue them, or 'leave' "
        "them running for the next daemon to adopt.",
    )
    aging_s: float = Field(
        default=600.0,
        gt=0,
        description="A job pending this many seconds rises one priority class (once).",
    )
    scheduler_policy: Literal["llmos", "llmos-easy", "fifo", "sjf", "tiresias"] = Field(
        default="llmos",
        description="The daemon's scheduling policy (kernel/scheduler/policies.py): llmos "
        "(classes of the service a job is expected to still need, learnt from its team's "
        "ended jobs; fair share, EASY backfill, gangs, GPU packing), "
        "llmos-easy (priority classes, EASY backfill), fifo, tiresias; sjf needs job "
        "durations, which only the simulator knows (the daemon treats them as unknown).",
    )
    sample_interval_s: float = Field(
        default=5.0, gt=0,
        description="Seconds between two measurements of the resources each running job, "
        "node and GPU uses (monitor/sampler.py; history kept in the store, downsampled).",
    )
    alerts_file: Path | None = Field(
        default=None,
        description="YAML file of alert rules (monitor/alerts.py); default LLMOS_HOME/"
        "alerts.yaml when present. A malformed file refuses the daemon's start.",
    )
    alert_interval_s: float = Field(
        default=10.0, gt=0, le=3600, description="Seconds between two evaluations of the "
        "alert rules.",
    )
    executor: str = Field(default="local", description="Executor used for new jobs.")
    node_labels: str = Field(
        default="",
        description="Labels of this machine's node, comma-separated key=value pairs "
        "(gpu=h100,zone=edge), which jobs and deployments may select (single-node llmos; on "
        "Ray, each node's labels come from `ray start --labels`).")
    # Scale-out (kernel/executors/ray/): without an address llmos stays single-node.
    ray_address: str | None = Field(
        default=None,
        description="Address of a Ray cluster's head (host:port of its GCS) to run jobs on "
        "(`llmos up --ray`); requires LLMOS_DATABASE_URL on PostgreSQL.")
    advertise_url: str | None = Field(
        default=None,
        description="The API address every node of a cluster reaches the daemon at "
        "(default: the address it listens on; for --host 0.0.0.0 on Ray, this host's "
        "address). `llmos up --ray` refuses a loopback address when nodes are elsewhere.")
    node_sync_s: float = Field(
        default=1.0, gt=0,
        description="How often the daemon refreshes the nodes from its executor (Ray).")
    sandbox: Literal["auto", "off"] = Field(
        default="auto",
        description="'auto': run each job in the strongest sandbox this machine allows "
        "(as root: a per-team system user in its own namespaces, with bubblewrap); 'off': "
        "plain processes of the daemon's user, which can read everything it can.")
    require_isolation: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Refuse to run jobs when they cannot be isolated from each other and "
        "from the daemon: 'on' always, 'auto' once more than one team exists, 'off' never.")
    job_network: Literal["none", "host"] = Field(
        default="none",
        description="'none': a sandboxed job has no network of its own and reaches the llmos "
        "API through a socket (so it cannot reach services on this host, such as a database "
        "trusting local connections); 'host': jobs share the host's network. Serving workers "
        "always share it (they listen for the gateway).")
    job_env: str = Field(
        default="",
        description="Comma-separated names of further environment variables of the daemon "
        "that jobs inherit (beyond PATH, locale, CUDA, thread and model-library settings); "
        "llmos's own LLMOS_* settings never pass.")
    job_max_processes: int = Field(
        default=4096, ge=16,
        description="Most processes and threads one job may have at once (a fork bomb "
        "stops there).")
    max_upload_mb: int = Field(default=16384, ge=1, description="Largest artifact upload.")
    max_body_mb: int = Field(
        default=32, ge=1,
        description="Largest request body of every other API route (413 beyond it).")
    max_job_params_kb: int = Field(
        default=1024, ge=1,
        description="Largest params of one job, as JSON (413 beyond it): pass big inputs "
        "as artifacts.")
    serve_keep_alive_s: float = Field(
        default=300.0, gt=0,
        description="A served model no request used for this long leaves its worker's "
        "memory (it loads again on the next request).")
    serve_target_inflight: float | None = Field(
        default=None, gt=0,
        description="Autoscaling: requests in flight per replica above which a pool scales "
        "up (default: half its smallest max_batch).")
    serve_scale_down_s: float = Field(
        default=30.0, gt=0,
        description="Autoscaling: how long load stays below half the target before each "
        "one-replica step down.")
    serve_cold_start_s: float = Field(
        default=30.0, gt=0,
        description="How long a request to a deployment with no ready worker waits for one "
        "before a 503 with Retry-After.")
    serve_target_p99_s: float | None = Field(
        default=None, gt=0,
        description="Autoscaling: add a replica while the last minute's p99 latency (time "
        "to first token for streams) is above this.")
    # Encryption at rest (sensitive artifacts and datasets).
    key_file: Path | None = Field(
        default=None,
        description="Key file for encryption at rest (created, mode 0600, on first use); "
        "default LLMOS_HOME/keys.json. Keep it off the data disk where you can.",
    )
    encryption_key: SecretStr | None = Field(
        default=None,
        description="A base64 AES-256 key used instead of a key file (key id 'env'). It "
        "cannot be rotated by `llmos keys rotate`, and another value is refused at start "
        "(its check value differs): to change it, write it to a key file as "
        '{"current": "env", "keys": {"env": "<the key>"}}, point LLMOS_KEY_FILE there, '
        "unset this and rotate.",
    )
    audit_key_file: Path | None = Field(
        default=None,
        description="The audit chain's HMAC key (created, mode 0600, on first start); "
        "default LLMOS_HOME/audit.key. Keep it with the encryption keys, never with the "
        "database: whoever holds it can rewrite the audit log undetected.")
    default_job_memory_mb: int = Field(default=1024, ge=1, description="Memory a job gets by default.")
    # Identities and access.
    token: SecretStr | None = Field(
        default=None,
        description="The API token the CLI and SDK present (else the credentials file).")
    credentials_file: Path | None = Field(
        default=None,
        description="Where `llmos login` keeps tokens per daemon URL (mode 0600); default "
        "LLMOS_HOME/credentials.json. The first `llmos up` saves the admin's token there.")
    auth_free_failures: int = Field(
        default=5, ge=1,
        description="Failed authentications with one token prefix from one address (ten "
        "times as many from the address in all) before each further failed attempt must wait "
        "(1 s, doubling up to LLMOS_AUTH_MAX_DELAY_S); a valid token never waits.")
    auth_max_delay_s: float = Field(
        default=60.0, gt=0, description="Longest wait imposed after failed authentications.")
    ingest_roots: str = Field(
        default="",
        description="Colon-separated folders on the llmos host that non-administrators may "
        "read files from (dataset ingest, model import); administrators may read any path.")
    # TLS for the API.
    tls_cert: Path | None = Field(default=None, description="PEM certificate: serve HTTPS.")
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert.")
    ca_bundle: Path | None = Field(
        default=None,
        description="CA bundle the CLI, SDK and jobs trust for the API (default: the system "
        "store; with a self-signed LLMOS_TLS_CERT, that certificate).")

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home_dir / 'llmos.db'}"

    @property
    def client_url(self) -> str:
        if self.url:
            return self.url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def api_ca(self) -> str | None:
        """What clients of this daemon (its jobs included) verify its certificate with."""
        ca = self.ca_bundle or self.tls_cert
        return str(ca.expanduser()) if ca else None

    @property
    def credentials_path(self) -> Path:
        return (self.credentials_file or self.home_dir / "credentials.json").expanduser()

    @property
    def ingest_root_dirs(self) -> list[Path]:
        return [Path(p).expanduser().resolve() for p in self.ingest_roots.split(":") if p]

    @property
    def node_label_map(self) -> dict[str, str]:
        return parse_labels(self.node_labels)

    @property
    def api_socket(self) -> Path:
        """The API's Unix socket: how sandboxed jobs without a network reach the daemon."""
        return self.home_dir / "run" / "api.sock"

    @property
    def jobs_dir(self) -> Path:
        return self.home_dir / "jobs"

    @property
    def artifacts_dir(self) -> Path:
        return self.home_dir / "artifacts"

    @property
    def key_path(self) -> Path:
        return (self.key_file or self.home_dir / "keys.json").expanduser()

    @property
    def audit_key_path(self) -> Path:
        return (self.audit_key_file or self.home_dir / "audit.key").expanduser()

    @property
    def audit_head_path(self) -> Path:
        """The audit chain's append-only anchor outside the database."""
        return self.home_dir / "audit.head"


LABEL_PART = r"[A-Za-z0-9]([A-Za-z0-9_.\-/]{0,62}[A-Za-z0-9])?"


def parse_labels(text: str | list[str] | dict[str, str]) -> dict[str, str]:
    """``"gpu=h100,zone=edge"`` (or a list of ``k=v``, or a dict) as a dict; ValueError
    naming the first malformed pair (keys and values: letters, digits, ``-_./``, at most
    64 characters, starting and ending with a letter or digit)."""
    import re

    if isinstance(text, dict):
        pairs = list(text.items())
    else:
        items = text.split(",") if isinstance(text, str) else list(text)
        if not all(isinstance(i, str) for i in items):
            raise ValueError("labels are key=value strings")
        pairs = []
        for item in (i.strip() for i in items):
            if not item:
                continue
            if "=" not in item:
                raise ValueError(f"label {item!r} is not key=value")
            key, value = item.split("=", 1)
            pairs.append((key.strip(), value.strip()))
    for key, value in pairs:
        for part in (key, value):
            if not isinstance(part, str) or not re.fullmatch(LABEL_PART, part):
                raise ValueError(
                    f"label {key}={value}: keys and values are 1-64 letters, digits or "
                    "-_./, starting and ending with a letter or digit")
    return dict(pairs)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


# What of the daemon's environment a job inherits: what programs need to run (search
# paths, locale, CUDA, thread pools, offline switches of the model libraries) and never
# credentials — the daemon's environment may hold cloud keys or tokens that are not a
# job's to see. LLMOS_JOB_ENV names more.
JOB_ENV_NAMES = ("PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "LANG", "LANGUAGE", "TZ",
                 "TERM", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHASHSEED", "PYTHONWARNINGS",
                 "SSL_CERT_FILE", "SSL_CERT_DIR")
JOB_ENV_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "NCCL_", "OMP_", "MKL_", "OPENBLAS_",
                    "TORCH_", "PYTORCH_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "GGML_")
# Never passed on, whatever matches above, unless named in LLMOS_JOB_ENV: a name with one of
# these words (HF_TOKEN, AWS_SECRET_ACCESS_KEY) reads as a secret.
SECRET_ENV_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "KEY")
