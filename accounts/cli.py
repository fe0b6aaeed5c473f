"""Manage API keys and read usage: create, list, show, update, revoke, rotate, usage, audit, migrate;
and the admin tokens of the web console: admin create, admin list, admin revoke.

A key's secret is printed once, by `create` and `rotate`; only its SHA-256
hash is stored. Run `migrate` once before anything else, and after every
upgrade. Every change (create, update, rotate, revoke) is recorded with the
operating-system user and host that made it and the fields before and
after; `audit` shows the record.

Admin tokens open the web console and /admin/api/ (when [admin] enabled is
true) and nothing else; API keys never open them. `admin create` prints a
token once; only its hash is stored, and `admin revoke` ends it and every
console session it opened.

The database is accounts.database_url: by default the SQLite file
llmapi-accounts.db beside the configuration file (--config or
$LLMAPI_CONFIG), else in $XDG_DATA_HOME/llmapi (~/.local/share/llmapi),
whatever the current directory; `--database-url` overrides it, and the end
of this help names the one in use. Only `migrate` creates it: the other
actions exit 3 on a database that does not exist, creating nothing.

Times are UTC. A date alone means that whole day: `--valid-from 2030-03-01
--valid-until 2030-03-31` lets a key in from 1 March 00:00 until the end of
31 March (stored as 2030-04-01T00:00Z, excluded). A date and time without
an offset is taken as UTC; `2030-03-31T18:00:00+02:00` is also accepted.
A key created or updated with a window that has already ended is kept, with
a warning on stderr.

Exit codes:
  0  success
  1  no key with that id
  2  invalid command line or value: bad date, negative limit, window ending
     before it starts, nothing to update, bad configuration
  3  database unavailable, absent or not migrated (run `llmapi accounts migrate`)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from typing import IO, TYPE_CHECKING, Any

from accounts import limits, output, times
from accounts.errors import AccountsError, AdminTokenNotFound, DatabaseUnavailable, InvalidValue, KeyNotFound
from accounts.records import Actor, AdminTokenInfo, AuditEntry, KeyInfo, UsageRow
from config.logs import configure_command_logging
from config.settings import AccountsSettings, ConfigError, Settings, load_settings

if TYPE_CHECKING:  # the store (and SQLAlchemy) is imported only when the command runs
    from accounts.store import AccountStore

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_INVALID = 2
EXIT_DATABASE = 3
EXIT_INTERNAL = 4

# Error class -> exit code, most specific first.
EXIT_CODES: tuple[tuple[type[AccountsError], int], ...] = (
    (KeyNotFound, EXIT_NOT_FOUND),
    (AdminTokenNotFound, EXIT_NOT_FOUND),
    (InvalidValue, EXIT_INVALID),
    (DatabaseUnavailable, EXIT_DATABASE),
)

Action = Callable[["AccountStore", argparse.Namespace, IO[str], IO[str]], int]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = examples(times.utcnow().date())
    parser.add_argument("--database-url", metavar="URL", help="SQLAlchemy URL (accounts.database_url)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url", metavar="URL", default=argparse.SUPPRESS, help="SQLAlchemy URL (accounts.database_url)"
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of text")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, run: Action, help_text: str, json: bool = True) -> argparse.ArgumentParser:
        parents = [common, as_json] if json else [common]
        sub = actions.add_parser(name, parents=parents, help=help_text, description=help_text)
        sub.set_defaults(action_run=run, creates_database=False)
        return sub

    create = action("create", _create, "Create a key and print its secret, once.")
    _owner_options(create, required=True)
    _limit_options(create, update=False)
    listing = action("list", _list, "List keys.")
    listing.add_argument("--email", help="only the keys of this owner")
    listing.add_argument("--hide-revoked", action="store_true", help="leave revoked keys out")
    _key_argument(action("show", _show, "Show one key."))
    update = action("update", _update, "Change a key's owner, limit, window, services or note.")
    _key_argument(update)
    _owner_options(update, required=False)
    _limit_options(update, update=True)
    _key_argument(action("revoke", _revoke, "Revoke a key: it is refused from now on."))
    _key_argument(action("rotate", _rotate, "Give a key a new secret; the old one stops working."))
    _usage_options(action("usage", _usage, "Usage per day and service, as a table or JSON."))
    audit = action("audit", _audit, "Changes made to keys: when, by whom, and the fields before and after.")
    audit.add_argument("--key", type=_key_id, dest="key_id", metavar="KEY_ID", help="one key only (default: all)")
    audit.add_argument(
        "--since", type=_window_start, metavar="WHEN", help="changes from then on; a date means 00:00 UTC"
    )
    action("migrate", _migrate, "Create the database, or upgrade its schema.", json=False).set_defaults(
        creates_database=True
    )
    _admin_actions(actions, [common, as_json])


def _admin_actions(actions: Any, parents: list[argparse.ArgumentParser]) -> None:
    """``admin create|list|revoke``: the tokens of the web console and /admin/api/."""
    admin = actions.add_parser(
        "admin", help="Admin tokens for the web console: create, list, revoke.", description=_ADMIN_HELP
    )
    tokens = admin.add_subparsers(dest="admin_action", metavar="ADMIN_ACTION", required=True)

    def token_action(name: str, run: Action, help_text: str) -> argparse.ArgumentParser:
        sub = tokens.add_parser(name, parents=parents, help=help_text, description=help_text)
        sub.set_defaults(action_run=run, creates_database=False)
        return sub

    token_action("create", _admin_create, "Create an admin token and print it, once.").add_argument(
        "--name", required=True, help="whose token it is (shown in the audit log of console changes)"
    )
    token_action("list", _admin_list, "List admin tokens.")
    token_action("revoke", _admin_revoke, "Revoke an admin token and end its console sessions.").add_argument(
        "token_id", type=_key_id, metavar="TOKEN_ID", help="the token's id (see `admin list`)"
    )


_ADMIN_HELP = """Admin tokens open the web console (/admin/) and its API (/admin/api/), and
nothing else: an admin token never serves a model request, and an API key
never opens /admin/. A token is printed once, by `admin create`; only its
hash is stored. Changes made in the console are recorded in `audit` under
the token's name."""


def examples(today: date) -> str:
    """The help's examples, with dates that are still ahead of ``today``."""
    return f"""Examples (key ids come from `list`; `llmapi up`'s demo key is usually 1):
  llmapi accounts migrate
  llmapi accounts create --email ana@example.org --max-requests 1000 \\
      --valid-until {today + timedelta(days=365)} --service default
  llmapi accounts update 2 --unlimited --note "paid plan"
  llmapi accounts usage --key 2 --since {today.replace(day=1)} --json
  llmapi accounts audit --key 2 --since {today.replace(day=1)}
"""


def help_footer(args: argparse.Namespace) -> str:
    """The end of ``--help``: the database these options (those before ``--help``) name."""
    return f"\nDatabase: {database_in_use(args)}\n"


def database_in_use(args: argparse.Namespace) -> str:
    """The accounts database these arguments name, password hidden, or why it is not known."""
    from accounts.database import describe_database_url

    url = getattr(args, "database_url", None)
    if url is None:
        try:
            url = load_settings(getattr(args, "config", None)).accounts.database_url
        except ConfigError as error:
            return f"unknown: {error}"
    return describe_database_url(url)


def _key_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("key_id", type=_key_id, metavar="KEY_ID", help="the key's id (see `list`)")


def _owner_options(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--email", required=required, help="owner's email address")
    parser.add_argument("--name", help="owner's name")
    parser.add_argument("--organisation", help="owner's organisation")
    parser.add_argument("--note", help="free text kept with the key")
    parser.add_argument(
        "--keep-texts", action=argparse.BooleanOptionalAction,
        help="keep its requests' texts (prompt and answer) in their usage records (default: no)",
    )


def _limit_options(parser: argparse.ArgumentParser, update: bool) -> None:
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument("--max-requests", type=_limit, metavar="N", help="requests allowed in all (default: unlimited)")
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--valid-from", type=_window_start, metavar="WHEN", help="first valid moment; a date means 00:00 UTC"
    )
    end = parser.add_mutually_exclusive_group()
    end.add_argument(
        "--valid-until", type=_window_end, metavar="WHEN", help="end of validity; a date means that whole day"
    )
    services = parser.add_mutually_exclusive_group()
    services.add_argument(
        "--service", action="append", dest="services", metavar="NAME", help="allowed service, repeatable (default: all)"
    )
    if update:
        limit.add_argument("--unlimited", action="store_true", help="remove the request limit")
        start.add_argument("--no-valid-from", action="store_true", help="valid from any time")
        end.add_argument("--no-valid-until", action="store_true", help="valid for ever")
        services.add_argument("--all-services", action="store_true", help="allow every service")
        parser.add_argument("--reset-used", action="store_true", help="set the count of used requests to 0")
    for key_limit in limits.LIMITS:
        _key_limit_option(parser, key_limit, update)


def _key_limit_option(parser: argparse.ArgumentParser, key_limit: limits.Limit, update: bool) -> None:
    flag = key_limit.name.replace("_", "-")
    group = parser.add_mutually_exclusive_group()
    default = "none" if key_limit.default is None else key_limit.default
    convert = _argument_type(lambda text: key_limit.check(_whole_number(text, key_limit.name, 0)), "N")
    group.add_argument(f"--{flag}", type=convert, dest=key_limit.name, metavar="N",
                       help=f"{key_limit.help} (default: {default})")
    if update and key_limit.optional:
        group.add_argument(f"--no-{flag}", action="store_true", dest=f"no_{key_limit.name}",
                           help=f"remove the {key_limit.name} limit")


def _usage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", type=_key_id, dest="key_id", metavar="KEY_ID", help="one key only (default: all)")
    parser.add_argument("--since", type=_date, metavar="DATE", help="first day, YYYY-MM-DD (included)")
    parser.add_argument("--until", type=_date, metavar="DATE", help="last day, YYYY-MM-DD (included)")
    parser.add_argument("--service", help="one service only")


def run(args: argparse.Namespace, settings: Settings) -> int:
    settings = settings.updated("accounts", database_url=args.database_url)
    configure_command_logging(settings.logging, "accounts")
    return execute(args, settings.accounts, sys.stdout, sys.stderr)


def execute(args: argparse.Namespace, settings: AccountsSettings, out: IO[str], err: IO[str]) -> int:
    """Run the parsed action against the store of ``settings``; the exit code."""
    from accounts.database import make_sqlite_directory
    from accounts.store import AccountStore

    if args.creates_database:
        make_sqlite_directory(settings.database_url)
    try:
        store = AccountStore(settings, create_database=args.creates_database)
    except AccountsError as error:
        return _fail(error, err)
    try:
        return int(args.action_run(store, args, out, err))
    except AccountsError as error:
        return _fail(error, err)
    finally:
        store.close()


def _fail(error: AccountsError, err: IO[str]) -> int:
    err.write(f"llmapi accounts: error: {error.message}\n")
    return next((code for cls, code in EXIT_CODES if isinstance(error, cls)), EXIT_INTERNAL)


def _warn_if_ended(info: KeyInfo, err: IO[str]) -> None:
    """One line on stderr when the key's window is already over: it will admit nothing."""
    if info.valid_until is not None and info.valid_until <= times.utcnow():
        err.write(
            f"llmapi accounts: warning: key {info.id}'s validity window ended at "
            f"{output.moment(info.valid_until, '')}; it admits nothing until `update {info.id} --valid-until` "
            "moves it\n"
        )


# -- argument types (argparse turns their errors into exit code 2) ----------


def _argument_type(parse: Callable[[str], object], name: str) -> Callable[[str], object]:
    def convert(text: str) -> object:
        try:
            return parse(text)
        except InvalidValue as error:
            raise argparse.ArgumentTypeError(error.message) from None

    convert.__name__ = name
    return convert


def _whole_number(text: str, what: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidValue(f"{what} must be a whole number (got {text!r})") from None
    if value < minimum:
        raise InvalidValue(f"{what} cannot be {'negative' if minimum == 0 else 'below 1'} (got {value})")
    return value


_limit = _argument_type(lambda text: _whole_number(text, "the request limit", 0), "limit")
_key_id = _argument_type(lambda text: _whole_number(text, "a key id", 1), "key id")
_window_start = _argument_type(times.parse_window_start, "date")
_window_end = _argument_type(times.parse_window_end, "date")
_date = _argument_type(times.parse_date, "date")


# -- actions ----------------------------------------------------------------


def _create(store: AccountStore, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    info, secret = store.create_key(
        email=args.email,
        name=args.name or "",
        organisation=args.organisation or "",
        max_requests=args.max_requests,
        valid_from=args.valid_from,
        valid_until=args.valid_until,
        services=args.services,
        note=args.note or "",
        keep_texts=bool(args.keep_texts),
        actor=Actor.current(),
        **{
            key_limit.name: value
            for key_limit in limits.LIMITS
            if (value := getattr(args, key_limit.name)) is not None
        },
    )
    _warn_if_ended(info, err)
    return _show_secret(info, secret, args, out, f"Created key {info.id}.")


def _rotate(store: AccountStore, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    info, secret = store.rotate_key(args.key_id, actor=Actor.current())
    return _show_secret(info, secret, args, out, f"Key {info.id} has a new secret; the old one no longer works.")


def _show_secret(info: KeyInfo, secret: str, args: argparse.Namespace, out: IO[str], headline: str) -> int:
    now = times.utcnow()
    if args.json:
        out.write(output.to_json({"key": output.key_json(info, now), "secret": secret}) + "\n")
        return EXIT_OK
    out.write(f"{headline}\nSecret (shown only now, store it safely):\n\n    {secret}\n\n")
    out.write(output.key_details(info, now) + "\n")
    return EXIT_OK


def _list(store: AccountStore, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    infos = store.list_keys(email=args.email, include_revoked=not args.hide_revoked)
    now = times.utcnow()
    if args.json:
        out.write(output.to_json([output.key_json(info, now) for info in infos]) + "\n")
    else:
        out.write(output.key_table(infos, now) + "\n")
    return EXIT_OK


def _show(store: AccountStore, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    return _print_key(store.get_key(args.key_id), args, out)


def _revoke(store: AccountStore, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    return _print_key(store.revoke_key(args.key_id, actor=Actor.current()), args, out)


def _print_key(info: KeyInfo, args: argparse.Namespace, out: IO[str]) -> int:
    now = times.utcnow()
    text = output.to_json(output.key_json(info, now)) if args.json else output.key_details(info, now)
    out.write(text + "\n")
    return EXIT_OK


def _update(store: AccountStore, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from accounts.store import UNCHANGED

    def given(value: object, cleared: bool) -> object:
        return None if cleared else (UNCHANGED if value is None else value)

    changes = {
        "email": given(args.email, False),
        "name": given(args.name, False),
        "organisation": given(args.organisation, False),
        "note": given(args.note, False),
        "keep_texts": given(args.keep_texts, False),
        "max_requests": given(args.max_requests, args.unlimited),
        "valid_from": given(args.valid_from, args.no_valid_from),
        "valid_until": given(args.valid_until, args.no_valid_until),
        "services": given(args.services, args.all_services),
    } | {
        key_limit.name: given(getattr(args, key_limit.name), getattr(args, f"no_{key_limit.name}", False))
        for key_limit in limits.LIMITS
    }
    changes = {name: value for name, value in changes.items() if value is not UNCHANGED}
    if not changes and not args.reset_used:
        raise InvalidValue("nothing to update: give at least one option (see --help)")
    info = store.update_key(
        args.key_id, reset_used=args.reset_used, actor=Actor.current(), **changes  # type: ignore[arg-type]
    )
    _warn_if_ended(info, err)
    return _print_key(info, args, out)


def _usage(store: AccountStore, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    if args.key_id is not None:
        store.get_key(args.key_id)  # an unknown key is exit 1, not an empty report
    rows = store.usage_report(key_id=args.key_id, since=args.since, until=args.until, service=args.service)
    return _print_rows(rows, args, out, output.usage_table)


def _audit(store: AccountStore, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    return _print_rows(store.audit_log(key_id=args.key_id, since=args.since), args, out, output.audit_table)


def _print_rows(
    rows: Sequence[UsageRow | AuditEntry], args: argparse.Namespace, out: IO[str], table: Callable[[Any], str]
) -> int:
    text = output.to_json([row.to_dict() for row in rows]) if args.json else table(rows)
    out.write(text + "\n")
    return EXIT_OK


def _admin_create(store: AccountStore, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    info, secret = store.create_admin_token(args.name)
    if args.json:
        out.write(output.to_json({"admin_token": info.to_dict(), "secret": secret}) + "\n")
        return EXIT_OK
    out.write(
        f"Created admin token {info.id} ({info.name}).\nToken (shown only now, store it safely):\n\n    {secret}\n\n"
        "Sign in to the console with it, or send it as `Authorization: Bearer` to /admin/api/.\n"
    )
    return EXIT_OK


def _admin_list(store: AccountStore, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    return _print_tokens(store.list_admin_tokens(), args, out)


def _admin_revoke(store: AccountStore, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    return _print_tokens([store.revoke_admin_token(args.token_id)], args, out)


def _print_tokens(tokens: list[AdminTokenInfo], args: argparse.Namespace, out: IO[str]) -> int:
    text = output.to_json([token.to_dict() for token in tokens]) if args.json else output.admin_table(tokens)
    out.write(text + "\n")
    return EXIT_OK


def _migrate(store: AccountStore, args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from accounts.database import describe_url

    store.migrate()
    out.write(f"Accounts database: {describe_url(store.engine)}\n")
    out.write(f"Accounts schema is at revision {store.schema_revision()}, the newest.\n")
    return EXIT_OK
