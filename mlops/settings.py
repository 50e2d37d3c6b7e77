"""Where things live: tracking URI, Optuna storage, DVC remote, serving limits.

Chosen by environment variables (prefix ``MLOPS_``) or a ``.env`` file, never by code edits. The
embedded defaults put everything under ``MLOPS_HOME`` (``.mlops/`` in the project root): MLflow on
SQLite with a local artifact folder, Optuna on a journal file shared by local worker processes.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: decoded-size limit of an uploaded image (decompression bombs): the service's default, and the predictors' own
MAX_IMAGE_PIXELS = 4096 * 4096


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MLOPS_", env_file=".env", extra="ignore")

    def __init__(self, **values):
        # MLOPS_ENV_FILE names another settings file; empty reads none (the test suite sets it so). Read at
        # each construction, not at import, so setting it later still counts.
        if "MLOPS_ENV_FILE" in os.environ:
            values.setdefault("_env_file", os.environ["MLOPS_ENV_FILE"] or None)
        super().__init__(**values)

    home: Path = Path(".mlops")
    tracking_uri: str | None = None
    artifact_root: str | None = None
    optuna_storage: str | None = None
    dvc_remote: str = ".dvc-storage"
    #: Database of the alias history; defaults to the MLflow backend store's (the tracking URI).
    history_uri: str | None = None
    # Cluster mode: Optuna on a database server shared by many workers, sweeps as Kubernetes Jobs
    #: connections of one worker process to the Optuna database (the server sees workers x both)
    db_pool_size: int = 2
    db_max_overflow: int = 2
    #: seconds between heartbeats of a running trial on a database server (0 turns heartbeats off)
    heartbeat_interval: int = 60
    #: a trial silent this long (seconds) is failed and retried from its last epoch checkpoint
    heartbeat_grace_period: int = 180
    #: retries of a trial whose worker died (preemption, OOM kill) before it stays failed
    trial_max_retry: int = 3
    #: where `mlops sweep --backend kubernetes` runs: namespace, worker image, kubeconfig context
    k8s_namespace: str = "mlops"
    k8s_image: str = "mlops:latest"
    k8s_context: str | None = None
    #: the sweep worker Job template the launcher fills in (relative to the project root)
    k8s_job_template: Path = Path("k8s/sweep/worker-job.yaml")
    # Serving
    #: Largest upload (predict, contributions); the request body may add the multipart framing on top.
    max_upload_bytes: int = 8 * 1024 * 1024
    #: Largest body of every other request (the JSON of promote, review, the registry webhook).
    max_request_bytes: int = 64 * 1024
    max_image_pixels: int = MAX_IMAGE_PIXELS
    served_alias: str = "champion"
    #: Computations one task may hold at once, computing or waiting (tasks in parallel), a micro-batch of up to
    #: max_batch requests counting as one: fracture and fume_hood admit queue_per_task * max_batch requests, the other
    #: tasks queue_per_task. One more is refused 503 with Retry-After, so a burst on one task cannot take every
    #: worker thread (the pool is sized for every lane full).
    queue_per_task: int = 4
    #: A request still waiting for its task's compute slot after this many seconds is answered 504.
    request_deadline_seconds: float = 30.0
    batch_wait_ms: float = Field(
        default=2.0,
        ge=0,
        description=(
            "Dynamic micro-batching (MLOPS_BATCH_WAIT_MS): the longest a request of a batchable task (fracture, "
            "fume_hood) waits for the task's other requests already received (reading their upload, decoding), so "
            "that they are computed as one forward pass; a lone request never waits. 0 turns batching off."
        ),
    )
    max_batch: int = Field(
        default=8,
        ge=1,
        description=(
            "Most requests of one task computed as one batch (MLOPS_MAX_BATCH; 1 turns batching off). A batch "
            "never holds more than the task's queue (MLOPS_QUEUE_PER_TASK) admits."
        ),
    )
    #: How often the service checks the registry for a moved alias (seconds; 0 disables the watch).
    alias_poll_seconds: float = 10.0
    # Member service: API keys, request log and contributions live in the service's database, which
    # defaults to the MLflow backend store's (like the alias history).
    service_db_uri: str | None = None
    #: Predict and contribute calls need an API key (header X-API-Key); off only for a closed demo box.
    require_api_key: bool = True
    key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description=(
            "Seconds a serving process trusts a key it has checked against the database (MLOPS_KEY_CACHE_SECONDS): "
            "a valid key's check is then answered from memory, not the database, for this long. It bounds how "
            "long a key revoked with `mlops keys revoke` (or by another replica) still works on a process that "
            "had just checked it; 0 checks the database on every request. Unknown and revoked keys are never "
            "cached."
        ),
    )
    #: Per-key token bucket: sustained requests per minute, and the burst a key may send at once.
    rate_limit_per_minute: int = 120
    rate_limit_burst: int = 20
    #: Failed authentications allowed per client address per minute (guessing keys), and their burst.
    auth_failures_per_minute: int = 10
    auth_failures_burst: int = 5
    #: Peers whose X-Forwarded-For the service believes (comma-separated IPs or CIDRs; "*" for any). Empty: none,
    #: so the per-address limits count the TCP peer and a client cannot rotate the header to get a fresh bucket.
    #: Behind the k8s Ingress set it to the ingress controller's addresses.
    forwarded_allow_ips: str = ""
    #: Redis for the rate limits (redis://host:6379/0): every replica then shares one bucket per key, so N
    #: replicas behind the k8s HPA allow the configured rate, not N times it. Unset: per process, in memory.
    #: ``mlops serve --workers N`` (N > 1) requires it.
    redis_url: str | None = None
    #: Prefix of the buckets' Redis keys: deployments sharing one Redis (staging, production) keep apart.
    redis_prefix: str = "mlops:ratelimit:"
    #: Shared secret of the MLflow registry webhook (HMAC of each delivery); unset = webhook needs an admin key.
    webhook_secret: str | None = None
    #: The params.yaml whose gates a promotion through the service checks.
    params_file: Path = Path("params.yaml")

    @cached_property
    def home_dir(self) -> Path:
        return self.home.resolve()

    @property
    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{self.home_dir / 'mlflow.db'}"

    @property
    def resolved_artifact_root(self) -> str:
        return self.artifact_root or (self.home_dir / "mlartifacts").as_uri()

    @property
    def resolved_optuna_storage(self) -> str:
        """An RDB URL (sqlite:///, postgresql://) or ``journal:<path>`` for a journal file."""
        return self.optuna_storage or f"journal:{self.home_dir / 'optuna.journal'}"

    @property
    def resolved_history_uri(self) -> str:
        """The SQLAlchemy URL of the alias history: ``history_uri``, else the MLflow backend store's own database."""
        if self.history_uri:
            return self.history_uri
        tracking_uri = self.resolved_tracking_uri
        if tracking_uri.startswith(("sqlite:", "postgresql", "mysql")):
            return tracking_uri
        raise ValueError(
            f"the tracking URI {tracking_uri!r} is not a database; set MLOPS_HISTORY_URI to the MLflow backend "
            "store's database URL so the alias history lives beside it"
        )

    @property
    def resolved_service_db_uri(self) -> str:
        return self.service_db_uri or self.resolved_history_uri

    @property
    def contributions_dir(self) -> Path:
        return self.home_dir / "contributions"

    @property
    def checkpoint_dir(self) -> Path:
        return self.home_dir / "checkpoints"

    def ensure_home(self) -> None:
        self.home_dir.mkdir(parents=True, exist_ok=True)


def get_settings() -> Settings:
    return Settings()
