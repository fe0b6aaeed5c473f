"""Run one worker: load an algorithm once, keep it resident, serve one task at a time.

The algorithm is a built-in name (echo, sleep, text-generation, embedding)
or `package.module:Class` from any installed package; a package exposing
`Algorithm` (as written for the Django LLM API server) may be named alone.
`--gpu N` pins the process to GPU N before any CUDA library is loaded.
SIGTERM drains it: the requests in hand finish within ``worker.drain_grace``
or are handed back to the broker for other workers, then it says DISCONNECT
and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from typing import Any

import structlog

from broker.security import peer_keys
from config.logs import configure_logging
from config.settings import ConfigError, Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--service", help="service (model) name to serve (worker.service)")
    parser.add_argument("--algorithm", metavar="SPEC", help="algorithm to load (worker.algorithm)")
    parser.add_argument(
        "--model", action="append", dest="model_names", help="model name, repeatable (worker.model_names)"
    )
    parser.add_argument("--gpu", type=int, metavar="N", help="GPU index to pin to (worker.gpu)")
    parser.add_argument("--endpoint", help="broker endpoint to connect to (broker.endpoint)")
    parser.add_argument("--key", metavar="FILE", help="this worker's secret CURVE key (curve.worker_key)")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="algorithm option, repeatable; VALUE is read as JSON when it parses (worker.options)",
    )
    parser.add_argument(
        "--no-config-model",
        action="store_true",
        help="ignore worker.options and worker.model_names of the configuration, which are meant for other "
        "workers: only --option and --model apply (as for the embedding worker of `llmapi up`)",
    )
    parser.add_argument(
        "--nice", type=int, default=0, metavar="N", help="lower this worker's CPU priority by N (nice) before it loads"
    )


def parse_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--option needs NAME=VALUE, got {pair!r}")
        try:
            options[name] = json.loads(value)
        except ValueError:
            options[name] = value
    return options


def quiet_progress_bars() -> None:
    """Keep libraries' progress bars out of the log, which is one event per line.

    Set before the libraries are imported, through their documented switches:
    huggingface_hub's (which transformers' own bars follow) and tqdm's, for the
    plain tqdm bars that transformers' GGUF loader draws.
    """
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TQDM_DISABLE"] = "1"


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.no_config_model:
        settings = settings.updated("worker", options={}, model_names=[])
    settings = settings.updated("broker", endpoint=args.endpoint)
    settings = settings.updated("curve", worker_key=args.key)
    options = {**settings.worker.options, **parse_options(args.option)} if args.option else None
    settings = settings.updated(
        "worker",
        service=args.service,
        algorithm=args.algorithm,
        model_names=args.model_names,
        gpu=args.gpu,
        options=options,
    )
    configure_logging(settings.logging, "worker")
    quiet_progress_bars()
    if args.nice:
        os.nice(args.nice)
    curve = peer_keys(settings.curve, "worker_key")
    if settings.worker.gpu is not None:
        # Must happen before torch (or anything CUDA) is imported by the algorithm.
        os.environ["CUDA_VISIBLE_DEVICES"] = str(settings.worker.gpu)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    from gpuworker.algorithm import AlgorithmLoadError, LoadedAlgorithm
    from gpuworker.worker import Worker

    log = structlog.get_logger("gpuworker")
    structlog.contextvars.bind_contextvars(service=settings.worker.service)
    try:
        algorithm = LoadedAlgorithm(
            settings.worker.algorithm, log, settings.worker.model_names, settings.worker.options
        )
    except AlgorithmLoadError as exc:
        log.error("algorithm_load_failed", reason=str(exc))
        return 3
    Worker(algorithm, settings.broker, settings.worker, stop, curve).run()
    return 0
