"""Run the whole stack in the foreground: broker, frontend and one worker per GPU
(one CPU worker where there is no GPU), on the configured accounts database
(by default a SQLite file in the data directory, see `llmapi accounts --help`),
and one worker serving the offline demo embedding model as the model `embed`
when its package is installed (the banner says how to install it otherwise).

Before starting anything it checks that the HTTP port and the broker's
endpoints are free: one that is not is one line on stderr and exit 1, with
nothing changed. It migrates the database and makes sure the demo key exists.
The key's secret is kept in a file only its owner can read, beside the
database, so every start prints the same key; `--new-demo-key` replaces it.
Once the HTTP port accepts connections it prints the key and a curl line
that works; until a worker is ready, requests wait and then get 503, never
404. The web console runs on its own loopback port (--admin-port, 8001 by
default); every start prints a new admin token for it (the previous start's
stops working). Ctrl-C or SIGTERM stops everything cleanly.

On the terminal, each HTTP request is one short line (its time, status, method,
path, key prefix, tokens and latency), and so is each warning or error; the
other events are left out but a model's loading and each worker ready (the
`terminal` logging format), unless the configuration file's `logging.format` or
`--log-format` names another: `console` or `json` shows every event.

Exit codes: 0 stopped when asked; 1 an address is taken, or a process of the
stack died; 3 the accounts database is unavailable.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from accounts.errors import AccountsError
from commands.console_token import console_token
from commands.demo_key import DemoKey, demo_key, key_file
from config import ports
from config.logs import configure_command_logging
from config.settings import Settings, config_path
from gpuworker.models.demo_embedding import DEMO_EMBEDDING_INSTALL, DEMO_EMBEDDING_NAME, find_demo_embedding

log = structlog.get_logger(__name__)

DEMO_ALGORITHM = "text-generation"
# Without a GPU, one worker: it batches concurrent requests on every core, where two split the
# cores and each decodes alone (bench.first_run on two cores, the README's chat example: alone
# 0.48 s against 0.42 s, p90 0.50 s both; four sent at once all answered in 0.77 s against
# 0.94 s), in half the memory.
CPU_WORKERS = 1
EMBEDDING_SERVICE = "embed"
EXIT_FAILED = 1
EXIT_DATABASE = 3
# The logging format up gives its processes, and itself, unless the configuration or --log-format names another.
TERMINAL_FORMAT = "terminal"
_POLL = 0.1


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--algorithm", metavar="SPEC", help=f"algorithm for the workers (default: {DEMO_ALGORITHM}, the demo model)"
    )
    parser.add_argument("--workers", type=int, metavar="N", help="workers to start (default: one per GPU, else 1)")
    parser.add_argument("--port", type=int, help="HTTP port (frontend.port)")
    parser.add_argument("--endpoint", help="broker endpoint (broker.endpoint)")
    parser.add_argument("--admin-port", type=int, help="the web console's loopback port (admin.port, 8001)")
    parser.add_argument("--database-url", metavar="URL", help="accounts database (accounts.database_url)")
    parser.add_argument("--new-demo-key", action="store_true", help="give the demo key a new secret")


def terminal_unless_chosen(settings: Settings) -> Settings:
    """``settings`` logging in the terminal format, unless a configuration file or
    ``--log-format`` chose a format."""
    if "format" in settings.logging.model_fields_set:
        return settings
    return settings.updated("logging", format=TERMINAL_FORMAT)


def run(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings.updated("frontend", port=args.port)
    settings = settings.updated("broker", endpoint=args.endpoint)
    settings = settings.updated("accounts", database_url=args.database_url)
    settings = settings.updated("admin", enabled=True, host="127.0.0.1", port=args.admin_port)
    settings = terminal_unless_chosen(settings)
    configure_command_logging(settings.logging, "up")
    problem = ports.first_problem(listeners(settings))
    if problem is not None:
        print(f"llmapi up: {problem}", file=sys.stderr)
        return EXIT_FAILED
    config = config_path(args.config)
    try:
        key = prepare_accounts(settings, key_file(settings, config), new_key=args.new_demo_key)
        admin_token = issue_console_token(settings)
    except AccountsError as error:
        print(f"llmapi up: {error.message}", file=sys.stderr)
        return EXIT_DATABASE
    gpus = gpu_count()
    count = args.workers or gpus or CPU_WORKERS
    algorithm = args.algorithm or DEMO_ALGORITHM
    embeddings = find_demo_embedding() is not None
    commands = stack_commands(settings, config, args.database_url, algorithm, count, gpus, embeddings)
    processes = [subprocess.Popen([sys.executable, "-m", "commands.cli", *command]) for command in commands]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    frontend = settings.frontend
    running = _wait(processes, lambda: stopping or ports.connectable(frontend.host, frontend.port))
    if running and not stopping:
        print(banner(key, settings, count, algorithm, command_path(), admin_token, embeddings), flush=True)
        running = _wait(processes, lambda: stopping)
    _stop(processes)
    return 0 if running else EXIT_FAILED


def listeners(settings: Settings) -> list[ports.Listener]:
    """The addresses the stack will listen on: the HTTP port and the broker's TCP endpoints."""
    found = [ports.Listener(settings.frontend.host, settings.frontend.port, "HTTP address", "--port")]
    if settings.admin.enabled:
        found.append(ports.Listener(settings.admin.host, settings.admin.port, "console address", "--admin-port"))
    for endpoint in settings.broker.bind_endpoints:
        address = ports.tcp_address(endpoint)
        if address is not None:
            found.append(ports.Listener(*address, "broker endpoint", "--endpoint"))
    return found


def prepare_accounts(settings: Settings, path: Path, new_key: bool) -> DemoKey:
    """Create or upgrade the accounts database, and return the demo key kept in ``path``."""
    from accounts.database import make_sqlite_directory
    from accounts.store import AccountStore

    make_sqlite_directory(settings.accounts.database_url)
    with AccountStore(settings.accounts) as store:
        store.migrate()
        return demo_key(store, path, new=new_key)


def issue_console_token(settings: Settings) -> str:
    """A new admin token for the console, the previous start's revoked."""
    from accounts.store import AccountStore

    with AccountStore(settings.accounts) as store:
        return console_token(store)


def stack_commands(
    settings: Settings,
    config: Path | None,
    database_url: str | None,
    algorithm: str,
    count: int,
    gpus: int,
    embeddings: bool,
) -> list[list[str]]:
    """The ``llmapi`` command lines of the broker, the frontend, ``count`` workers and, with
    ``embeddings``, the demo embedding model's worker, each logging in ``logging.format``."""
    common = ["--config", str(config)] if config is not None else []
    endpoint = settings.broker.endpoint
    service = settings.frontend.default_service
    # Only a URL given on up's own command line is passed on: the others come from the same settings.
    database = ["--database-url", database_url] if database_url else []
    # The configuration's worker options are the chat workers'. One thread at a lower priority leaves
    # the CPU to them: at equal priority, on two cores, it delayed the first chat answer by 6 s.
    embedding_worker = ["worker", *common, "--endpoint", endpoint, "--service", EMBEDDING_SERVICE,
                        "--algorithm", "embedding", "--no-config-model", "--option", "cpu_threads=1", "--nice", "10"]
    commands = [
        ["broker", *common, "--endpoint", endpoint, "--service", service,
         *(["--service", EMBEDDING_SERVICE] if embeddings else [])],
        ["frontend", *common, "--endpoint", endpoint, "--port", str(settings.frontend.port), *database,
         *(["--admin-port", str(settings.admin.port)] if settings.admin.enabled else [])],
        *(
            ["worker", *common, "--endpoint", endpoint, "--service", service, "--algorithm", algorithm,
             *(["--gpu", str(n)] if n < gpus else [])]
            for n in range(count)
        ),
        *([embedding_worker] if embeddings else []),
    ]
    return [[*command, "--log-format", settings.logging.format] for command in commands]


def _wait(processes: list[subprocess.Popen[bytes]], done: Callable[[], bool]) -> bool:
    """Poll until ``done()`` (True) or until a process dies on its own (False)."""
    while not done():
        for process in processes:
            if process.poll() is not None:
                log.error("process_exited", args=_role(process), returncode=process.returncode)
                return False
        time.sleep(_POLL)
    return True


def _role(process: subprocess.Popen[bytes]) -> object:
    """What ``process`` serves: the command and its first option (``up`` starts it with a list)."""
    args = process.args
    return args[3:5] if isinstance(args, list) else args


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


def gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count()


def command_path() -> str:
    """How to run this installation's ``llmapi`` from here: its name where the shell finds it, else its path."""
    script = Path(sys.executable).parent / "llmapi"
    if not script.is_file():
        return f"{sys.executable} -m commands.cli"
    found = shutil.which("llmapi")
    if found is not None and Path(found).absolute() == script.absolute():
        return "llmapi"
    try:
        return str(script.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def banner(
    key: DemoKey, settings: Settings, workers: int, algorithm: str, llmapi: str, admin_token: str, embeddings: bool
) -> str:
    from accounts.database import describe_database_url

    port = settings.frontend.port
    served = (
        f"model '{EMBEDDING_SERVICE}' ({DEMO_EMBEDDING_NAME}) on http://127.0.0.1:{port}/v1/embeddings"
        if embeddings
        else f"none; `{DEMO_EMBEDDING_INSTALL}` installs the offline model"
    )
    kept = f"{'new, ' if key.new else ''}kept in {key.path}; `{llmapi} up --new-demo-key` replaces it"
    converts = " (a first start converts the demo model, about 30 s)" if algorithm == DEMO_ALGORITHM else ""
    return f"""
llmapi is listening on http://127.0.0.1:{port}/ and starting {workers} worker(s) of '{algorithm}';
until one is ready, requests get 503, never 404{converts}

  database:  {describe_database_url(settings.accounts.database_url)}
  demo key:  {key.secret}
             ({kept})

  curl --request POST --url http://127.0.0.1:{port}/api/ \\
       --header "Authorization: Bearer {key.secret}" \\
       --header 'Content-Type: application/json' \\
       --data '{{"text": "What is the capital of France?"}}'

  embeddings: {served}

  console:   {settings.admin.url}  (this machine only)
  admin token, for this run only (sign in with it):
             {admin_token}

  status:    {llmapi} status        keys: {llmapi} accounts --help        stop: Ctrl-C
"""
