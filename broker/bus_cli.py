"""Keys for CurveZMQ on the bus.

`llmapi bus keygen NAME [--dir DIR]` writes DIR/NAME.key, the public key, and
DIR/NAME.key_secret, the pair, readable by its owner only. Copy NAME.key into
the broker's curve.workers or curve.clients folder to let the key in; name
NAME.key_secret in this host's curve.worker_key, curve.frontend_key or
curve.client_key, and the broker's own in curve.server_key. See docs/deploy.md.
"""

from __future__ import annotations

import argparse

from broker.security import write_key_pair
from config.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    keygen = actions.add_parser(
        "keygen", help="write a new key pair in ZeroMQ's certificate format", description=__doc__
    )
    keygen.add_argument("name", help="the key's name: its files' name, and the peer's identity in logs and status")
    keygen.add_argument("--dir", default=".", help="folder to write the two files in (default: here)")
    keygen.add_argument("--force", action="store_true", help="replace a pair of that name")


def run(args: argparse.Namespace, settings: Settings) -> int:
    public, secret = write_key_pair(args.name, args.dir, replace=args.force)
    print(f"public key: {public}  (copy it into the broker's curve.workers or curve.clients folder)")
    print(f"secret key: {secret}  (mode 0600: keep it on this host, name it in its settings)")
    return 0
