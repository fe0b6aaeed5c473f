"""The ``llmapi`` command: one subcommand per process of the stack.

Each subcommand lives in the package it runs (here, for the commands that use
every layer), as a module with ``configure(parser)`` (its options) and
``run(args, settings) -> int``, and may have ``help_footer(args) -> str``, printed after its ``--help`` (say,
which database the options given before ``--help`` name).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from config.settings import CONFIG_ENV, ConfigError, Settings, load_settings

# name -> (module, one-line help). Modules are imported when the parser is
# built; none of them may import torch at module level.
COMMANDS: dict[str, tuple[str, str]] = {
    "broker": ("broker.cli", "Run the ZeroMQ broker that routes requests to workers."),
    "worker": ("gpuworker.cli", "Run one worker: load an algorithm once and serve it."),
    "frontend": ("frontend.cli", "Run the HTTP API in front of the broker."),
    "status": ("commands.status", "Show services, workers and queues as the broker sees them."),
    "up": ("commands.up", "Run the whole stack in the foreground, with a demo key."),
    "accounts": ("accounts.cli", "Manage API keys, quotas and validity windows; report usage."),
    "bus": ("broker.bus_cli", "Manage the bus's CurveZMQ keys (keygen)."),
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML configuration file (default: ${CONFIG_ENV}, else built-in defaults)",
    )
    common.add_argument(
        "--log-format", choices=["console", "json", "terminal"], help="override logging.format"
    )
    parser = argparse.ArgumentParser(
        prog="llmapi",
        description="An authenticated API in front of language models held resident on GPUs.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(
            name, parents=[common], help=help_text, description=module.__doc__, add_help=False
        )
        footer = getattr(module, "help_footer", None)
        sub.add_argument("-h", "--help", action=_Help, footer=footer, help="show this help message and exit")
        module.configure(sub)
        sub.set_defaults(run=module.run)
    return parser


class _Help(argparse.Action):
    """``--help``, followed by the command's ``help_footer`` of the options parsed so far."""

    def __init__(
        self,
        option_strings: list[str],
        dest: str = argparse.SUPPRESS,
        footer: Callable[[argparse.Namespace], str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.footer = footer

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, *_: object) -> None:
        parser.print_help()
        if self.footer is not None:
            sys.stdout.write(self.footer(namespace))
        parser.exit()


def settings_from(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    return settings.updated("logging", format=args.log_format)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
        return args.run(args, settings)
    except ConfigError as exc:
        print(f"llmapi: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
