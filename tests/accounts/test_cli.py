"""`llmapi accounts` end to end: the real command line in a subprocess for each exit code,
and the rest of its behaviour in-process through the same parser."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from accounts import errors, schema
from accounts.cli import examples, execute
from accounts.errors import AdmissionDenied
from accounts.keys import KEY_PREFIX
from accounts.records import UsageRecord
from accounts.store import AccountStore
from commands.cli import build_parser
from config.settings import AccountsSettings
from tests.harness import ROOT

SECRET = re.compile(re.escape(KEY_PREFIX) + r"[0-9A-Za-z]{49}")


def llmapi(cwd: Path, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m commands.cli accounts ...`` as an admin would run it from ``cwd``, without any config
    file, importing this checkout (whatever the virtual environment's editable install points at)."""
    env = {name: value for name, value in os.environ.items() if name != "LLMAPI_CONFIG"} | (env or {})
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "commands.cli", "accounts", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
        check=False,
    )


def in_process(url: str, *argv: str) -> tuple[int, str, str]:
    """The same parser and action, run here: (exit code, stdout, stderr)."""
    args = build_parser().parse_args(["accounts", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = execute(args, AccountsSettings(database_url=url), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def migrated(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'accounts.db'}"
    with AccountStore.from_url(url) as store:
        store.migrate()
    return url


# -- through the real command line ------------------------------------------


def test_migrate_creates_the_database_and_its_directory_and_running_it_again_is_harmless(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'fresh.db'}"
    result = llmapi(tmp_path, "migrate", "--database-url", url)
    assert (result.returncode, result.stdout) == (
        0,
        f"Accounts database: {url}\nAccounts schema is at revision {schema.head_revision()}, the newest.\n",
    )
    assert in_process(url, "migrate")[:2] == (0, result.stdout)


def test_a_key_created_on_the_command_line_works_until_it_is_revoked(tmp_path: Path, migrated: str) -> None:
    created = llmapi(
        tmp_path, "create", "--database-url", migrated, "--email", "ana@example.org",
        "--max-requests", "5", "--valid-until", "2099-12-31", "--service", "default",
    )
    assert created.returncode == 0, created.stderr
    secret = SECRET.search(created.stdout).group(0)  # type: ignore[union-attr]
    assert "shown only now" in created.stdout and secret not in created.stderr
    assert "2100-01-01T00:00:00+00:00 (excluded), valid through 2099-12-31" in created.stdout
    with AccountStore.from_url(migrated) as store:
        key_id = store.admit(secret, "default").key_id
        revoked = llmapi(tmp_path, "--database-url", migrated, "revoke", str(key_id))
        assert revoked.returncode == 0, revoked.stderr
        assert re.search(r"revoked\s+yes", revoked.stdout) and secret not in revoked.stdout
        with pytest.raises(AdmissionDenied) as denial:
            store.admit(secret, "default")
    assert denial.value.reason == errors.REVOKED


def test_rotate_json_gives_a_new_secret_and_the_old_one_stops_working(tmp_path: Path, migrated: str) -> None:
    with AccountStore.from_url(migrated) as store:
        info, old = store.create_key(email="ana@example.org")
        rotated = llmapi(tmp_path, "rotate", str(info.id), "--json", "--database-url", migrated)
        assert rotated.returncode == 0, rotated.stderr
        reply = json.loads(rotated.stdout)
        assert reply["key"]["id"] == info.id and SECRET.fullmatch(reply["secret"])
        assert store.admit(reply["secret"], "default").key_id == info.id
        with pytest.raises(AdmissionDenied):
            store.admit(old, "default")


def test_usage_json_reports_what_was_recorded(tmp_path: Path, migrated: str) -> None:
    with AccountStore.from_url(migrated) as store:
        info, secret = store.create_key(email="ana@example.org")
        at = datetime(2030, 6, 15, 8, tzinfo=UTC)
        for _ in range(3):
            admission = store.admit(secret, "default")
            store.record_usage(UsageRecord.from_texts(admission=admission, request_text="a b c", output_text="d", at=at))
    usage = llmapi(tmp_path, "usage", "--json", "--key", str(info.id), "--database-url", migrated)
    assert usage.returncode == 0, usage.stderr
    assert json.loads(usage.stdout) == [
        {
            "day": "2030-06-15", "service": "default", "requests": 3, "failures": 0, "charged": 3,
            "input_words": 9, "input_chars": 15, "output_words": 3, "output_chars": 3,
            "prompt_tokens": 0, "completion_tokens": 0, "gpu_seconds": 0.0, "cost": None,
        }
    ]


def test_an_unknown_key_exits_1(tmp_path: Path, migrated: str) -> None:
    result = llmapi(tmp_path, "show", "99", "--database-url", migrated)
    assert (result.returncode, result.stdout) == (1, "")
    assert "llmapi accounts: error: no key with id 99" in result.stderr


def test_a_negative_limit_exits_2_with_the_reason(tmp_path: Path, migrated: str) -> None:
    result = llmapi(tmp_path, "create", "--database-url", migrated, "--email", "a@b.c", "--max-requests", "-1")
    assert result.returncode == 2
    assert "argument --max-requests: the request limit cannot be negative (got -1)" in result.stderr


def test_an_unusable_database_exits_3(tmp_path: Path) -> None:
    result = llmapi(tmp_path, "list", "--database-url", f"sqlite:///{tmp_path / 'no' / 'such.db'}")
    assert result.returncode == 3
    assert "directory of the SQLite database does not exist" in result.stderr


# -- the same parser and actions, in-process ---------------------------------


def test_show_and_list_print_keys_as_text_or_json_without_secrets(migrated: str) -> None:
    with AccountStore.from_url(migrated) as store:
        info, secret = store.create_key(email="ana@example.org", name="Ana", services=["default"])
    code, text, _ = in_process(migrated, "show", str(info.id))
    assert code == 0 and "ana@example.org" in text and info.prefix in text and secret not in text
    code, listed, _ = in_process(migrated, "list", "--json")
    keys = json.loads(listed)
    assert [(k["id"], k["status"], k["services"], k["remaining"]) for k in keys] == [(info.id, "active", ["default"], None)]
    assert secret not in listed
    code, table, _ = in_process(migrated, "list")
    assert table.splitlines()[0].split()[:4] == ["ID", "PREFIX", "EMAIL", "STATUS"]


def test_update_sets_and_clears_limits_windows_and_services(migrated: str) -> None:
    with AccountStore.from_url(migrated) as store:
        info, _ = store.create_key(email="ana@example.org")
    code, out, err = in_process(
        migrated, "update", str(info.id), "--max-requests", "7", "--valid-from", "2030-01-01",
        "--valid-until", "2030-01-31", "--service", "a", "--service", "b", "--note", "trial", "--json",
    )
    assert code == 0, err
    key = json.loads(out)
    assert (key["max_requests"], key["services"], key["note"]) == (7, ["a", "b"], "trial")
    assert (key["valid_from"], key["valid_until"]) == ("2030-01-01T00:00:00+00:00", "2030-02-01T00:00:00+00:00")
    code, out, _ = in_process(
        migrated, "update", str(info.id), "--unlimited", "--no-valid-from", "--no-valid-until", "--all-services", "--json"
    )
    key = json.loads(out)
    assert (key["max_requests"], key["valid_from"], key["valid_until"], key["services"]) == (None, None, None, None)


def test_create_update_and_show_carry_every_other_limit(migrated: str) -> None:
    code, out, err = in_process(
        migrated, "create", "--email", "ana@example.org", "--requests-per-minute", "60", "--tokens-per-minute",
        "10000", "--token-budget", "1000000", "--max-concurrent", "2", "--weight", "3", "--json",
    )
    assert code == 0, err
    key = json.loads(out)["key"]
    assert (key["requests_per_minute"], key["tokens_per_minute"], key["token_budget"], key["max_concurrent"],
            key["weight"], key["tokens_used"]) == (60, 10000, 1000000, 2, 3, 0)
    code, text, _ = in_process(migrated, "show", str(key["id"]))
    assert "requests per minute  60 requests a minute" in text and "tokens per minute    10000 tokens a minute" in text
    assert "max concurrent       2 at once" in text and "weight               weight 3" in text
    assert "0 used of 1000000 (1000000 left)" in text
    code, table, _ = in_process(migrated, "list")
    assert "60 requests a minute; 10000 tokens a minute; 1000000 tokens in all; 2 at once; weight 3" in table
    code, out, _ = in_process(migrated, "update", str(key["id"]), "--max-prompt-tokens", "4096", "--json")
    assert json.loads(out)["max_prompt_tokens"] == 4096
    assert "max prompt tokens    4096 prompt tokens a request" in in_process(migrated, "show", str(key["id"]))[1]
    code, out, _ = in_process(
        migrated, "update", str(key["id"]), "--no-requests-per-minute", "--no-tokens-per-minute", "--no-token-budget",
        "--no-max-concurrent", "--weight", "1", "--json",
    )
    key = json.loads(out)
    assert (key["requests_per_minute"], key["tokens_per_minute"], key["token_budget"], key["max_concurrent"],
            key["weight"]) == (None, None, None, None, 1)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["update", "1"], 2, "nothing to update"),
        (["update", "1", "--valid-until", "2029-12-31", "--valid-from", "2030-01-01"], 2, "before it starts"),
        (
            ["create", "--email", "a@b.c", "--valid-from", "2030-02-01", "--valid-until", "2030-01-01"],
            2,
            "validity window ends (2030-01-02T00:00:00+00:00) before it starts (2030-02-01T00:00:00+00:00)",
        ),
        (["usage", "--since", "2030-02-01", "--until", "2030-01-01"], 2, "report ends (2030-01-01) before it starts"),
        (["usage", "--key", "42"], 1, "no key with id 42"),
        (["create", "--email", "not-an-email"], 2, "invalid email address"),
        (["rotate", "42"], 1, "no key with id 42"),
    ],
)
def test_bad_requests_exit_with_the_documented_code_and_a_clear_message(
    migrated: str, argv: list[str], code: int, message: str
) -> None:
    with AccountStore.from_url(migrated) as store:
        store.create_key(email="ana@example.org")
    exit_code, out, err = in_process(migrated, *argv)
    assert (exit_code, out) == (code, "")
    assert message in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["create", "--email", "a@b.c", "--valid-from", "2030-13-01"], "argument --valid-from: invalid date '2030-13-01'"),
        (["create", "--email", "a@b.c", "--valid-until", "soon"], "argument --valid-until: invalid date 'soon'"),
        (["create", "--email", "a@b.c", "--max-requests", "many"], "the request limit must be a whole number"),
        (["usage", "--since", "01/02/2030"], "argument --since: invalid date"),
        (["show", "0"], "a key id cannot be below 1"),
        (["update", "1", "--unlimited", "--max-requests", "3"], "not allowed with argument"),
        (["create"], "the following arguments are required: --email"),
        (["create", "--email", "a@b.c", "--weight", "1001"], "argument --weight: weight must be 1 to 1000 (got 1001)"),
        (["create", "--email", "a@b.c", "--max-concurrent", "0"], "max_concurrent must be 1 to"),
        (["update", "1", "--no-weight"], "unrecognized arguments: --no-weight"),
        (["update", "1", "--no-token-budget", "--token-budget", "5"], "not allowed with argument"),
    ],
)
def test_malformed_command_lines_exit_2_naming_the_argument(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["accounts", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_database_that_was_never_migrated_exits_3_and_says_to_migrate(tmp_path: Path) -> None:
    code, _, err = in_process(f"sqlite:///{tmp_path / 'empty.db'}", "list")
    assert code == 3 and "llmapi accounts migrate" in err


def test_the_database_url_may_come_before_or_after_the_action() -> None:
    before = build_parser().parse_args(["accounts", "--database-url", "sqlite:///a.db", "list"])
    after = build_parser().parse_args(["accounts", "list", "--database-url", "sqlite:///b.db"])
    neither = build_parser().parse_args(["accounts", "list"])
    assert (before.database_url, after.database_url, neither.database_url) == ("sqlite:///a.db", "sqlite:///b.db", None)


def test_the_usage_table_has_a_row_per_day_and_service_and_a_total(migrated: str) -> None:
    with AccountStore.from_url(migrated) as store:
        _, secret = store.create_key(email="ana@example.org")
        for day in (1, 2):
            at = datetime(2030, 6, day, tzinfo=UTC)
            store.record_usage(UsageRecord(admission=store.admit(secret, "default"), input_words=4, at=at))
    code, out, _ = in_process(migrated, "usage", "--since", date(2030, 6, 1).isoformat())
    lines = out.splitlines()
    assert code == 0 and len(lines) == 4
    assert lines[1].split()[:4] == ["2030-06-01", "default", "1", "0"]
    assert lines[3].split()[:3] == ["TOTAL", "2", "0"]


def test_actions_other_than_migrate_on_an_absent_database_exit_3_saying_to_migrate_and_create_nothing(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'absent.db'}"
    for argv in (["list"], ["show", "1"], ["usage"], ["revoke", "1"], ["create", "--email", "a@b.c"]):
        code, out, err = in_process(url, *argv)
        assert (code, out) == (3, ""), argv
        assert f"there is no accounts database at {tmp_path / 'absent.db'}" in err and "accounts migrate" in err
    assert list(tmp_path.iterdir()) == []


def test_help_ends_with_the_database_beside_the_configuration_file_else_in_the_user_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LLMAPI_CONFIG", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    config = tmp_path / "site" / "llmapi.toml"
    config.parent.mkdir()
    config.write_text('[logging]\nlevel = "info"\n')
    for argv, database in [
        (["--help"], tmp_path / "data" / "llmapi" / "llmapi-accounts.db"),
        (["--config", str(config), "--help"], tmp_path / "site" / "llmapi-accounts.db"),
    ]:
        with pytest.raises(SystemExit):
            build_parser().parse_args(["accounts", *argv])
        assert capsys.readouterr().out.endswith(f"\nDatabase: sqlite:///{database}\n")


def test_the_help_example_creates_a_key_that_is_valid_now(migrated: str) -> None:
    text = examples(date.today())
    command = re.search(r"llmapi accounts (create (?:.*\\\n)*.*)", text).group(1)  # type: ignore[union-attr]
    code, out, err = in_process(migrated, *shlex.split(command.replace("\\\n", " ")))
    assert (code, err) == (0, "")
    assert re.search(r"status\s+active", out)


def test_a_key_given_a_window_that_has_ended_is_kept_with_a_one_line_warning(migrated: str) -> None:
    code, out, err = in_process(migrated, "create", "--email", "ana@example.org", "--valid-until", "2020-01-31")
    assert code == 0 and "Created key 1." in out
    assert err == (
        "llmapi accounts: warning: key 1's validity window ended at 2020-02-01T00:00:00+00:00; "
        "it admits nothing until `update 1 --valid-until` moves it\n"
    )
    assert in_process(migrated, "update", "1", "--valid-until", "2099-12-31")[::2] == (0, "")
    code, _, err = in_process(migrated, "update", "1", "--valid-from", "2019-01-01", "--valid-until", "2019-02-01")
    assert code == 0 and err.count("\n") == 1 and "key 1's validity window ended at 2019-02-02" in err
