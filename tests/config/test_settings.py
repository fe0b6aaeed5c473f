import subprocess
import sys

import pytest

from commands.cli import build_parser, settings_from
from commands.up import terminal_unless_chosen
from config.settings import ConfigError, Settings, load_settings
from tests.harness import ROOT


def test_defaults_need_no_file(monkeypatch):
    monkeypatch.delenv("LLMAPI_CONFIG", raising=False)
    settings = load_settings()
    assert settings == Settings()
    assert settings.broker.heartbeat_interval == 1.0 and settings.broker.heartbeat_liveness == 3


def test_the_file_named_by_the_environment_variable_is_read(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text('[broker]\nqueue_limit = 7\n[worker]\nservice = "gpt"\n')
    monkeypatch.setenv("LLMAPI_CONFIG", str(path))
    settings = load_settings()
    assert settings.broker.queue_limit == 7 and settings.worker.service == "gpt"


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("[broker]\nqueue_limt = 7\n", "broker.queue_limt: unknown key"),
        ("[brokr]\n", "brokr: unknown key"),
        ('[broker]\nqueue_limit = "7"\n', "broker.queue_limit"),
        ("[broker]\nheartbeat_interval = -1.0\n", "broker.heartbeat_interval"),
        ('[logging]\nformat = "xml"\n', "logging.format"),
        ("[worker]\nreconnect_initial = 5.0\nreconnect_max = 1.0\n", "reconnect_max"),
        ('[curve]\nserver_key = "broker.key_secret"\nworkers = "w"\n', "curve.server_key needs both allowlist folders"),
        ('[curve]\nclients = "c"\n', "only read by a broker with curve.server_key"),
        ('[curve]\nbroker_keys = "b.key"\n', "curve.broker_keys: unknown key"),
        ("[broker]\nclient_limits = { analytics = 0 }\n", "broker.client_limits.analytics"),
        ('[broker]\nallow_plaintext = "yes"\n', "broker.allow_plaintext"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_configuration_is_a_clear_error(tmp_path, text, complaint):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=complaint.replace(".", r"\.")):
        load_settings(path)


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.toml")


def test_command_line_values_override_the_file():
    settings = Settings().updated("broker", endpoint="tcp://127.0.0.1:1", queue_limit=None)
    assert settings.broker.endpoint == "tcp://127.0.0.1:1"
    assert settings.broker.queue_limit == Settings().broker.queue_limit
    with pytest.raises(ConfigError, match="queue_limit"):
        Settings().updated("broker", queue_limit=-3)


@pytest.mark.parametrize(
    ("file", "flag", "expected"),
    [
        ("", None, "terminal"),
        ('[logging]\nlevel = "debug"\n', None, "terminal"),
        ('[logging]\nformat = "json"\n', None, "json"),
        ('[logging]\nformat = "json"\n', "console", "console"),
        ("", "json", "json"),
    ],
)
def test_up_logs_in_the_terminal_format_unless_the_file_or_the_command_line_chose_one(tmp_path, file, flag, expected):
    config = tmp_path / "llmapi.toml"
    config.write_text(file)
    args = build_parser().parse_args(["up", "--config", str(config), *(["--log-format", flag] if flag else [])])
    settings = settings_from(args).updated("frontend", port=8123)  # another section's override changes nothing
    assert terminal_unless_chosen(settings).logging.format == expected


def llmapi(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "commands.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, **kwargs
    )


def test_the_command_line_refuses_a_bad_configuration_at_start_up(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[broker]\nbogus = 1\n")
    result = llmapi("broker", "--config", str(path))
    assert result.returncode == 2
    assert "broker.bogus: unknown key" in result.stderr


@pytest.mark.parametrize("command", ["broker", "worker"])
def test_each_subcommand_explains_itself(command):
    result = llmapi(command, "--help")
    assert result.returncode == 0
    assert "--config" in result.stdout and "--endpoint" in result.stdout


def test_a_worker_with_an_unloadable_algorithm_exits_with_a_clear_error():
    result = llmapi("worker", "--algorithm", "no_such_package.module:Thing")
    assert result.returncode == 3
    assert "cannot import" in result.stderr


def test_a_frontend_deadline_beyond_the_brokers_maximum_is_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[frontend]\nrequest_timeout = 700.0\n[broker]\nmax_timeout = 600.0\n")
    with pytest.raises(ConfigError, match="request_timeout"):
        load_settings(path)


def test_the_accounts_database_is_beside_the_configuration_file_else_in_the_user_data_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("LLMAPI_CONFIG", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert Settings().accounts.database_url == f"sqlite:///{tmp_path}/data/llmapi/llmapi-accounts.db"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/data")  # ignored, as the XDG specification says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load_settings().accounts.database_url == f"sqlite:///{tmp_path}/home/.local/share/llmapi/llmapi-accounts.db"
    config = tmp_path / "site" / "llmapi.toml"
    config.parent.mkdir()
    config.write_text('[logging]\nlevel = "info"\n')
    assert load_settings(config).accounts.database_url == f"sqlite:///{tmp_path}/site/llmapi-accounts.db"
    config.write_text('[accounts]\ndatabase_url = "sqlite:///elsewhere.db"\n')
    assert load_settings(config).accounts.database_url == "sqlite:///elsewhere.db"
