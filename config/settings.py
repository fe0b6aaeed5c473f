"""Every setting of the stack, declared once, typed and documented.

Settings come from a TOML file named by the environment variable
``LLMAPI_CONFIG`` (or ``--config`` on the command line); every key has a
default, so the whole stack runs with no file at all. Unknown keys and
values of the wrong type are a :class:`ConfigError` at start-up.

Files the stack keeps (the SQLite accounts database, the demo key) live in
one data directory unless a setting says otherwise: the configuration
file's directory when there is one, else ``$XDG_DATA_HOME/llmapi``
(``~/.local/share/llmapi``), whatever the current directory.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from config.ports import local_host

CONFIG_ENV = "LLMAPI_CONFIG"
DATA_HOME_ENV = "XDG_DATA_HOME"
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
DATABASE_FILE = "llmapi-accounts.db"


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid."""


def config_path(given: str | os.PathLike[str] | None = None) -> Path | None:
    """The configuration file in use: ``given`` (``--config``), else ``$LLMAPI_CONFIG``, else none."""
    path = given if given is not None else os.environ.get(CONFIG_ENV) or None
    return None if path is None else Path(path)


def data_directory(config: str | os.PathLike[str] | None = None) -> Path:
    """Where llmapi keeps its files: beside the configuration file ``config`` when there is
    one, else the per-user data directory (``$XDG_DATA_HOME/llmapi``, ``~/.local/share/llmapi``)."""
    if config is not None:
        return Path(config).expanduser().absolute().parent
    data_home = os.environ.get(DATA_HOME_ENV, "")
    # The XDG specification says to ignore a relative path here.
    base = Path(data_home) if os.path.isabs(data_home) else Path.home() / ".local" / "share"
    return base / "llmapi"


def default_database_url(config: str | os.PathLike[str] | None = None) -> str:
    """The SQLite accounts database in the :func:`data_directory` of ``config``."""
    return f"sqlite:///{data_directory(config) / DATABASE_FILE}"


class _Section(BaseModel):
    # Defaults are passed as ``default=``: type checkers (dataclass_transform) read only the
    # keyword as a default, so a positional one would make every field look required.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class BrokerSettings(_Section):
    endpoint: str = Field(
        default=DEFAULT_ENDPOINT,
        description="Where clients and workers connect to the broker.",
    )
    bind: list[str] = Field(
        default_factory=list,
        description="Endpoints the broker binds; empty means bind `endpoint` itself.",
    )
    heartbeat_interval: float = Field(
        default=1.0, gt=0, description="Seconds between heartbeats, both ways."
    )
    heartbeat_liveness: int = Field(
        default=3, ge=1, description="Heartbeats missed before a peer is taken for dead."
    )
    queue_limit: int = Field(
        default=1000, ge=0, description="Requests queued per service before OVERLOADED."
    )
    tenant_queue_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Largest share of `queue_limit` one tenant (an API key, or a direct client) may "
        "fill, so that one cannot fill the queue for the others; past it, OVERLOADED.",
    )
    max_attempts: int = Field(
        default=2,
        ge=1,
        description="Workers a task may be dispatched to before it is answered WORKER_LOST.",
    )
    max_message_bytes: int = Field(
        default=16 * 1024 * 1024, gt=0, description="Largest ZeroMQ message accepted."
    )
    default_timeout: float = Field(
        default=60.0, gt=0, description="Deadline in seconds for a request that names none."
    )
    max_timeout: float = Field(
        default=600.0, gt=0, description="Longest deadline in seconds a client may ask for."
    )
    unavailable_after: float = Field(
        default=10.0,
        ge=0,
        description="Seconds a known service may have no live worker before its "
        "requests are answered UNAVAILABLE instead of queued.",
    )
    services: list[str] = Field(
        default_factory=list,
        description="Services known before any worker registers (else UNKNOWN_SERVICE).",
    )
    client_timeout: float = Field(
        default=5.0,
        gt=0,
        description="Seconds a client that heartbeats (every client of this revision but REQ ones) "
        "may go silent before the broker takes it for gone and drops or cancels its requests; "
        "above the clients' heartbeat interval.",
    )
    startup_grace: float = Field(
        default=10.0,
        ge=0,
        description="Seconds after the broker starts during which a request for a service no "
        "worker offers yet is queued (then UNAVAILABLE, 503) rather than UNKNOWN_SERVICE (404): "
        "workers re-register within a heartbeat after a broker restart.",
    )

    allow_plaintext: bool = Field(
        default=False,
        description="Let the broker bind a TCP endpoint that is not loopback without CURVE "
        "(`curve.server_key`): its traffic is then neither encrypted nor authenticated.",
    )
    client_limits: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict,
        description="Most requests in flight per client key, by the key's name (its file name in "
        "`curve.clients`, without `.key`); past it a request is answered CLIENT_LIMIT (HTTP 429). "
        "Keys not named have no limit. Needs CURVE: without it clients have no names.",
    )

    @property
    def bind_endpoints(self) -> list[str]:
        return self.bind or [self.endpoint]


class CurveSettings(_Section):
    """CurveZMQ keys, in ZeroMQ's certificate format (`llmapi bus keygen NAME`).

    With none set, the bus is plaintext, as `make run` needs; the broker then
    binds nothing but loopback and ipc endpoints unless `broker.allow_plaintext`.
    Paths are read from the process's working directory; use absolute ones.
    """

    server_key: str | None = Field(
        default=None,
        description="The broker's secret certificate (`NAME.key_secret`), set on the broker's host only: "
        "the broker then speaks CURVE on every endpoint it binds and admits only the keys in "
        "`curve.workers` and `curve.clients`.",
    )
    workers: str | None = Field(
        default=None,
        description="Folder of the public certificates (`*.key`) of workers, which may register (READY) "
        "and serve; the broker re-reads it on SIGHUP and when it changes.",
    )
    clients: str | None = Field(
        default=None,
        description="Folder of the public certificates (`*.key`) of clients (frontends, `llmapi status`, "
        "direct clients), which may send requests; re-read as `curve.workers` is.",
    )
    broker_key: str | None = Field(
        default=None,
        description="The broker's public certificate (`NAME.key`): set, every peer (worker, frontend, "
        "`llmapi status`) speaks CURVE to the broker and checks that it is this broker.",
    )
    worker_key: str | None = Field(
        default=None, description="Secret certificate of this host's workers (a key in `curve.workers`)."
    )
    frontend_key: str | None = Field(
        default=None, description="Secret certificate of this host's frontends (a key in `curve.clients`)."
    )
    client_key: str | None = Field(
        default=None,
        description="Secret certificate of `llmapi status` and other direct clients built from these "
        "settings (a key in `curve.clients`).",
    )

    @model_validator(mode="after")
    def _allowlists_with_server_key(self) -> CurveSettings:
        folders = (self.workers, self.clients)
        if self.server_key is not None and None in folders:
            raise ValueError("curve.server_key needs both allowlist folders, curve.workers and curve.clients")
        if self.server_key is None and folders != (None, None):
            raise ValueError("curve.workers and curve.clients are only read by a broker with curve.server_key")
        return self


class WorkerSettings(_Section):
    service: str = Field(default="default", min_length=1, description="Service (model) name served.")
    algorithm: str = Field(
        default="echo",
        min_length=1,
        description="Algorithm to load: a built-in name or `package.module:Class`.",
    )
    model_names: list[str] = Field(
        default_factory=list, description="Passed to the algorithm's constructor."
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword options for built-in algorithms (model path, dtype, bounds).",
    )
    gpu: int | None = Field(default=None, ge=0, description="GPU index to pin to; none runs on CPU.")
    reconnect_initial: float = Field(
        default=1.0, gt=0, description="First reconnect delay in seconds; doubles each try."
    )
    reconnect_max: float = Field(default=32.0, gt=0, description="Longest reconnect delay in seconds.")
    drain_grace: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM, seconds the requests in hand may take to finish; those still running "
        "then are handed back to the broker, which gives them to other workers (a stream goes on "
        "from the tokens it sent).",
    )


class FrontendSettings(_Section):
    host: str = Field(default="127.0.0.1", description="Address the HTTP server listens on.")
    port: int = Field(default=8000, ge=0, le=65535, description="HTTP port.")
    default_service: str = Field(
        default="default", min_length=1, description="Service behind POST /api/ and /analyze/."
    )
    max_body_bytes: int = Field(default=1024 * 1024, gt=0, description="Largest request body accepted.")
    max_text_chars: int = Field(default=100_000, gt=0, description="Longest `text` accepted.")
    max_url_bytes: int = Field(
        default=16 * 1024, gt=0, description="Longest request target (path and query) accepted; longer is a 414."
    )
    max_header_bytes: int = Field(
        default=32 * 1024, gt=0, description="Largest request line and headers accepted; more is a 431."
    )
    request_timeout: float = Field(default=60.0, gt=0, description="Deadline of an API request, seconds.")
    admission_timeout: float = Field(
        default=5.0,
        gt=0,
        description="Most seconds a request waits for the accounts database to admit it "
        "(capped by request_timeout); past it the answer is 503 and nothing is charged.",
    )
    max_choices: int = Field(
        default=16, ge=1, le=128, description="Most choices (`n`) one OpenAI completion request may ask for."
    )
    metrics_token: str | None = Field(
        default=None, description="Bearer token for /metrics; none means loopback callers only."
    )
    reuse_port: bool = Field(
        default=False, description="Let several frontend processes listen on the same port (SO_REUSEPORT)."
    )
    trust_proxy_headers: bool = Field(
        default=False,
        description="Take the client address from X-Real-Ip / X-Forwarded-For "
        "(only behind a proxy such as nginx that sets them).",
    )
    key_failure_limit: int = Field(
        default=20,
        ge=0,
        description="Failed key checks (unknown, malformed or revoked keys) one client address may make within "
        "`key_failure_window`, counted across every frontend in the accounts database, before every request "
        "from it is refused (429) for `key_block_seconds`; 0 turns the brake off.",
    )
    key_failure_window: float = Field(
        default=60.0, gt=0, description="Seconds over which failed key checks are counted."
    )
    key_block_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long a first block lasts; each further block of the address lasts twice as long.",
    )
    key_block_max_seconds: float = Field(default=3600.0, gt=0, description="The longest block.")
    idle_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a connection may sit idle, or take to send a request's headers, "
        "before it is closed (keep-alive and slow clients alike).",
    )
    body_timeout: float = Field(default=60.0, gt=0, description="Seconds a client may take to send a request body.")
    shutdown_grace: float = Field(
        default=10.0,
        ge=0,
        description="Seconds requests in progress get to finish after SIGTERM; those still running "
        "then are answered 503 (or an error event), cancelled and refunded. Keep supervisord's "
        "stopwaitsecs above it.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins (`https://app.example.org`, or `*`) whose browser pages may call the API; "
        "preflight requests are answered without a key. None by default.",
    )
    abandoned_check_interval: float = Field(
        default=60.0,
        gt=0,
        description="Seconds between sweeps for admissions that a dead frontend left open (the same sweep forgets "
        "texts older than accounts.text_retention_days).",
    )


class AccountsSettings(_Section):
    database_url: str = Field(
        default_factory=default_database_url,
        description=f"SQLAlchemy URL of the accounts database; by default the SQLite file {DATABASE_FILE} "
        "beside the configuration file, else in $XDG_DATA_HOME/llmapi (~/.local/share/llmapi).",
    )
    store_texts: bool = Field(
        default=False,
        description="Keep request text and output in usage records, for every key (a key's own keep_texts "
        "keeps them for that key alone).",
    )
    text_retention_days: int = Field(
        default=30,
        ge=1,
        description="Days a usage record keeps its request text and output; the frontends' sweep forgets them "
        "after (the record itself is kept: it is the ledger).",
    )
    usage_flush_interval: float = Field(
        default=0.5, gt=0, description="Seconds between writes of buffered usage records."
    )
    usage_buffer_limit: int = Field(
        default=1000, gt=0, description="Usage records buffered before a write is forced."
    )
    usage_backlog_limit: int = Field(
        default=100_000,
        gt=0,
        description="Usage records kept in memory while the database cannot be "
        "written; beyond it the oldest are dropped and the loss is logged.",
    )
    busy_timeout: float = Field(
        default=5.0,
        gt=0,
        description="Seconds a SQLite connection waits for a lock before the "
        "database counts as unavailable.",
    )
    connect_timeout: int = Field(
        default=5, ge=2, description="Seconds to wait for a PostgreSQL connection (libpq minimum 2)."
    )
    idempotency_retention: float = Field(
        default=86_400.0,
        gt=0,
        description="Seconds an Idempotency-Key is remembered: a retry carrying it "
        "within that time is admitted without being counted again.",
    )
    response_retention: float = Field(
        default=30 * 86_400.0,
        gt=0,
        description="Seconds a response of the Responses API made with `store` is kept for its key "
        "(to read back, or to continue with `previous_response_id`).",
    )
    gpu_hour_prices: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        default_factory=dict,
        description="The price of one GPU-hour for each service (`{ name = price }`, in the currency "
        "you bill in; `\"*\"` prices the services not named). Usage reports then show what each key's "
        "GPU time cost; a service without a price shows none.",
    )
    abandoned_after: float = Field(
        default=900.0,
        gt=0,
        description="Seconds after which an admission whose usage record was never written "
        "(its frontend died) is refunded and recorded as abandoned; longer than any request runs.",
    )

    @model_validator(mode="after")
    def _backlog_holds_a_batch(self) -> AccountsSettings:
        if self.usage_backlog_limit < self.usage_buffer_limit:
            raise ValueError("accounts.usage_backlog_limit must be at least accounts.usage_buffer_limit")
        return self


class AdminSettings(_Section):
    enabled: bool = Field(
        default=False,
        description="Serve the web console (/admin/) and its API (/admin/api/) on a listener of their own "
        "(`host`, `port`), never on the API's. `llmapi up` turns it on, on loopback.",
    )
    host: str = Field(
        default="127.0.0.1", description="Address the console listens on; keep it private (see docs/deploy.md)."
    )
    port: int = Field(default=8001, ge=0, le=65535, description="The console's port.")
    session_lifetime: float = Field(
        default=8 * 3600.0, gt=0, description="Seconds a console sign-in lasts before signing in again."
    )
    sign_in_failures: int = Field(
        default=5,
        ge=1,
        description="Failed sign-ins (wrong or revoked admin token, or an API key) one client address may make "
        "within `sign_in_window`, counted across every frontend in the accounts database, before every sign-in "
        "from it is refused (429) for a window.",
    )
    sign_in_window: float = Field(default=300.0, gt=0, description="Seconds over which failed sign-ins are counted.")

    @property
    def url(self) -> str:
        """The console's address for a browser on this machine."""
        host = local_host(self.host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/admin/"


class LoggingSettings(_Section):
    format: Literal["console", "json", "terminal"] = Field(
        default="console",
        description="`json` for production, `console` for people; `terminal`, what `llmapi up` gives its "
        "processes: one short line per HTTP request and per warning or error, and the few events a person "
        "starting the stack waits for (a model loaded, a worker ready), every other event left out.",
    )
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info",
        description="The servers' level (broker, frontend, worker); the other commands log only warnings "
        "and errors, their output being what they print.",
    )


class Settings(_Section):
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    curve: CurveSettings = Field(default_factory=CurveSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    frontend: FrontendSettings = Field(default_factory=FrontendSettings)
    accounts: AccountsSettings = Field(default_factory=AccountsSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.worker.reconnect_max < self.worker.reconnect_initial:
            raise ValueError("worker.reconnect_max must be at least worker.reconnect_initial")
        if self.frontend.request_timeout > self.broker.max_timeout:
            raise ValueError("frontend.request_timeout must not exceed broker.max_timeout")
        if self.broker.heartbeat_interval * 2 > self.broker.client_timeout:
            raise ValueError("broker.client_timeout must be at least twice broker.heartbeat_interval")
        if self.admin.enabled and (self.admin.host, self.admin.port) == (self.frontend.host, self.frontend.port):
            raise ValueError("admin.port must differ from frontend.port: the console has a listener of its own")
        if self.accounts.abandoned_after <= self.frontend.request_timeout + self.frontend.admission_timeout:
            raise ValueError(
                "accounts.abandoned_after must exceed frontend.request_timeout plus frontend.admission_timeout"
            )
        return self

    def updated(self, section: str, **values: Any) -> Settings:
        """A copy with some keys of one section replaced (command-line overrides); the section
        still tells the keys chosen (``model_fields_set``) from those left at their defaults."""
        given = {k: v for k, v in values.items() if v is not None}
        if not given:
            return self
        merged = getattr(self, section).model_dump(exclude_unset=True) | given
        return self.model_copy(update={section: _validate(type(getattr(self, section)), merged)})


def _validate(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        lines.append(f"{where}: {message}")
    return "invalid configuration: " + "; ".join(lines)


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read settings from ``path``, else from ``$LLMAPI_CONFIG``, else defaults."""
    path = config_path(path)
    if path is None:
        return Settings()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    accounts = data.setdefault("accounts", {})
    if isinstance(accounts, dict):  # anything else is refused by validation
        accounts.setdefault("database_url", default_database_url(path))
    return _validate(Settings, data)
