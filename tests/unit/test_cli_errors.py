"""User errors on the command line: one clear line, exit status 2, within seconds, no traceback.

Covers the broker address (malformed, unreachable), bad variables, missing columns,
options after the sub-subcommand, variables that belong to one command only, and a
``rum --help`` that imports no torch.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.kafka import harness
from model import cli as model_cli
from model.options import env_name
from stream.brokers import BrokerError, Server, bootstrap_servers, parse_broker, probe
from stream.cli import build_parser, main
from stream.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]
GENERIC = {"RUM_DATA", "RUM_OUT", "RUM_ONCE", "RUM_K", "RUM_JSON", "RUM_MODEL", "RUM_THREADS"}


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port that refuses connections: bound (so nobody else takes it) but not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("RUM_")]:
        monkeypatch.delenv(name)


# --- the broker address ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "servers"),
    [
        ("kafka://127.0.0.1:9092", [Server("127.0.0.1", 9092)]),
        ("kafka://a:1;b.example.com:2", [Server("a", 1), Server("b.example.com", 2)]),
        ("kafka://a:1;kafka://b:2", [Server("a", 1), Server("b", 2)]),
        ("a:1,b:2", [Server("a", 1), Server("b", 2)]),
        ("kafka://[::1]:9092", [Server("::1", 9092)]),
    ],
)
def test_broker_forms_that_are_accepted(url: str, servers: list[Server]) -> None:
    assert parse_broker(url) == servers


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("nonsense", "has no port"),
        ("kafka://broker", "has no port"),
        ("kafka://broker:port", "has no port"),
        ("http://broker:9092", "unsupported scheme"),
        ("kafka://broker:0", "out of range"),
        ("kafka://broker:70000", "out of range"),
        ("kafka://bad host:9092", "not a host name"),
        ("kafka://:9092", "not a host name"),
        (" ; ", "empty"),
    ],
)
def test_malformed_broker_names_the_problem_and_the_form(url: str, why: str) -> None:
    with pytest.raises(BrokerError, match=why) as refused:
        parse_broker(url)
    assert "kafka://host:port[;host:port]" in str(refused.value)


def test_bootstrap_servers_is_the_kafka_python_form() -> None:
    assert bootstrap_servers("kafka://a:1;b:2") == "a:1,b:2"
    assert Settings(broker="kafka://a:1;b:2").kafka_bootstrap == "a:1,b:2"


def test_settings_refuse_a_malformed_broker() -> None:
    with pytest.raises(SettingsError, match="'nonsense' has no port"):
        Settings.from_env({"RUM_BROKER": "nonsense"})


def test_probe_refused_port_and_listening_port(closed_port: int) -> None:
    with pytest.raises(BrokerError, match=rf"127\.0\.0\.1:{closed_port}: connection refused"):
        probe(f"kafka://127.0.0.1:{closed_port}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        # The second server answers: one live bootstrap server is enough.
        probe(f"kafka://127.0.0.1:{closed_port};127.0.0.1:{port}")


@pytest.mark.parametrize("command", [["demo"], ["evaluate-stream", "--data", "x", "--model", "y"]])
def test_commands_with_a_broker_option_check_it_first(
    command: list[str],
    closed_port: int,
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RUM_BROKER", "nonsense")
    assert main(command) == 2
    assert "'nonsense' has no port" in capsys.readouterr().err
    monkeypatch.setenv("RUM_BROKER", f"kafka://127.0.0.1:{closed_port}")
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "connection refused" in err and "rum kafka start" in err and err.count("\n") == 1


def test_bench_checks_the_broker_it_is_given(
    closed_port: int, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "stream", "--bootstrap", "nonsense"]) == 2
    assert "'nonsense' has no port" in capsys.readouterr().err
    assert main(["bench", "stream", "--bootstrap", f"127.0.0.1:{closed_port}"]) == 2
    assert "connection refused" in capsys.readouterr().err


def test_replay_refuses_a_malformed_broker_before_reading(
    tmp_path: Path, closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\nu,i,1\n")
    assert main(["replay", str(log), "--broker", "kafka://nowhere"]) == 2
    assert "has no port" in capsys.readouterr().err
    assert main(["replay", str(log), "--broker", f"127.0.0.1:{closed_port}"]) == 2
    assert "connection refused" in capsys.readouterr().err.splitlines()[-1]


def _rum(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("RUM_")}, **env},
        capture_output=True,
        text=True,
        timeout=30,  # a command that hangs on the broker fails here
        check=False,
    )


@pytest.mark.parametrize("command", [["worker"], ["trainer", "--once"], ["models", "list"]])
def test_kafka_commands_fail_in_one_line_on_a_bad_or_unreachable_broker(
    command: list[str], tmp_path: Path, closed_port: int
) -> None:
    env = {
        "RUM_MODEL_DIR": str(tmp_path / "models"),
        "RUM_DATA_DIR": str(tmp_path / "worker"),
        "RUM_TRAINER_DATA_DIR": str(tmp_path / "trainer"),
    }
    for broker, expected in (
        ("nonsense", "'nonsense' has no port; expected kafka://host:port"),
        (f"kafka://127.0.0.1:{closed_port}", f"127.0.0.1:{closed_port}: connection refused"),
    ):
        done = _rum(command, {**env, "RUM_BROKER": broker})
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, done.stderr
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        assert lines[0].startswith(f"rum {command[0]}: ") and expected in lines[0]


# --- variables -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "raw", "expected"),
    [
        ("RUM_PARTITIONS", "abc", "RUM_PARTITIONS='abc': expected an integer"),
        ("RUM_MICRO_BATCH_WAIT_S", "soon", "RUM_MICRO_BATCH_WAIT_S='soon': expected a number"),
        ("RUM_EXCLUDE_SEEN", "maybe", "RUM_EXCLUDE_SEEN='maybe': expected true/false"),
    ],
)
def test_bad_setting_names_the_variable_and_the_type(
    variable: str, raw: str, expected: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({variable: raw})
    assert str(refused.value) == expected


def test_bad_setting_stops_the_worker_in_one_line(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUM_PARTITIONS", "abc")
    assert main(["worker"]) == 2
    assert capsys.readouterr().err == "rum worker: RUM_PARTITIONS='abc': expected an integer\n"


@pytest.mark.parametrize(
    ("variable", "raw", "expected"),
    [
        ("RUM_TRAIN_EPOCHS", "abc", "(for --epochs): expected an integer"),
        ("RUM_TRAIN_ALPHA", "lots", "(for --alpha): expected a number"),
        ("RUM_TRAIN_VARIANT", "big", "(for --variant): expected one of item, feature"),
        ("RUM_TRAIN_ALL", "maybe", "(for --all): expected 1/true/yes/on or 0/false/no/off"),
    ],
)
def test_bad_option_variable_is_one_line_and_exit_2(
    variable: str,
    raw: str,
    expected: str,
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(variable, raw)
    with pytest.raises(SystemExit) as exited:
        main(["train", "--data", "x.csv", "--out", "out"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"error: {variable}={raw!r} {expected}\n"


def test_option_variables_are_named_after_their_command() -> None:
    assert env_name("--max-len", "rum train") == "RUM_TRAIN_MAX_LEN"
    assert env_name("--json", "rum bench stream") == "RUM_BENCH_JSON"
    assert env_name("--json") == "RUM_JSON"


def test_help_names_the_variable_that_is_read(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUM_TRAIN_EPOCHS", "7")
    monkeypatch.setenv("RUM_EPOCHS", "99")  # the old, generic name: read by nothing
    parser = model_cli.train_parser()
    assert "[env: RUM_TRAIN_EPOCHS]" in " ".join(parser.format_help().split())
    assert parser.parse_args(["--data", "x", "--out", "y"]).epochs == 7


def test_generic_variables_reach_no_command(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUM_DATA", "elsewhere.csv")
    with pytest.raises(SystemExit):  # --data is still required: RUM_DATA is not read
        model_cli.train_parser().parse_args(["--out", "y"])
    monkeypatch.delenv("RUM_DATA")
    owners: dict[str, set[str]] = {}
    for command, variable in _variables():
        owners.setdefault(variable, set()).add(command)
    settings = {f.metadata["env"] for f in Settings.__dataclass_fields__.values()}
    assert not GENERIC & set(owners)
    shared = {v: sorted(c) for v, c in owners.items() if len(c) > 1 and v not in settings}
    assert shared == {}  # only worker settings are shared between commands


def _variables() -> Iterator[tuple[str, str]]:
    """(top-level command, variable) for every option of every command."""
    parsers: list[tuple[str, argparse.ArgumentParser]] = [
        ("train", model_cli.train_parser()),
        ("evaluate", model_cli.evaluate_parser()),
    ]
    top = build_parser()
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            parsers += [(name, sub) for name, sub in action.choices.items()]
    while parsers:
        command, parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += [(command, sub) for sub in action.choices.values()]
            elif action.help and "[env: " in action.help:
                yield command, action.help.split("[env: ", 1)[1].rstrip("]")


# --- command-line shape ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "broker", "model_dir"),
    [
        (["models", "list", "--broker", "kafka://x:1"], "kafka://x:1", None),
        (["models", "--broker", "kafka://x:1", "list"], "kafka://x:1", None),
        (["models", "--broker", "kafka://x:1", "list", "--model-dir", "s"], "kafka://x:1", "s"),
        (["models", "promote", "v1", "--broker", "kafka://y:2"], "kafka://y:2", None),
    ],
)
def test_models_options_before_or_after_the_action(
    argv: list[str], broker: str, model_dir: str | None, clean_env: None
) -> None:
    args = build_parser(["models"]).parse_args(argv)
    assert (args.broker, args.model_dir) == (broker, model_dir)


def test_models_list_uses_the_broker_given_after_list(
    closed_port: int, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "list", "--broker", f"kafka://127.0.0.1:{closed_port}"]) == 2
    assert f"127.0.0.1:{closed_port}: connection refused" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "evaluate"])
@pytest.mark.parametrize(
    ("name", "content", "missing"),
    [
        ("log.csv", "user,item_id,timestamp\nu,i,1\n", "['user_id']"),
        ("log.jsonl", '{"user_id": "u", "item": "i", "timestamp": 1}\n', "'item_id'"),
    ],
)
def test_missing_column_is_named_with_the_fix_and_exit_2(
    command: str,
    name: str,
    content: str,
    missing: str,
    tmp_path: Path,
    clean_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / name
    data.write_text(content)
    extra = ["--out", str(tmp_path / "m")] if command == "train" else ["--baseline", "pop"]
    with pytest.raises(SystemExit) as exited:
        main([command, "--data", str(data), *extra, "--threads", "1"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"rum {command}: ") and missing in err and "--columns" in err


def test_top_level_help_is_plain_and_points_to_nothing_missing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "BENCHMARKS.md" not in text
    assert "rum kafka start" in text and "RUM_BROKER" in text


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["worker", "--help"], "Run a streaming worker"),
        (["trainer", "--help"], "Fine-tune the current model"),
        (["kafka", "start", "--help"], "on port 9092 (what RUM_BROKER defaults to)"),
    ],
)
def test_commands_have_a_description(
    argv: list[str], words: str, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(argv)
    assert words in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(
    "code",
    [
        "from stream.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
        "from stream.cli import main\ntry:\n    main(['replay', '--help'])\nexcept SystemExit:\n"
        "    pass",
        "from stream.cli import main\nmain(['kafka', 'status', '--data-dir', 'nowhere'])",
        "import stream.models\nimport stream.replay",  # `rum models list` and `rum replay`
    ],
)
def test_commands_that_neither_score_nor_train_import_no_torch(code: str) -> None:
    check = f"{code}\nimport sys\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    done = subprocess.run(
        [sys.executable, "-c", check],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "torch was imported" not in done.stderr and "Traceback" not in done.stderr, done.stderr


# --- rum kafka start: the port ---------------------------------------------------------------


def test_kafka_start_prefers_the_rum_broker_port_when_free() -> None:
    free = harness.free_port()
    assert harness.pick_port(None, default=free) == (free, None)
    assert int(Settings().broker.rsplit(":", 1)[1]) == harness.DEFAULT_PORT


def test_kafka_start_says_when_the_default_port_is_taken(closed_port: int) -> None:
    port, note = harness.pick_port(None, default=closed_port)
    assert port != closed_port and note is not None and f"port {closed_port}" in note
    with pytest.raises(harness.KafkaHarnessError, match=f"port {closed_port} .* is taken"):
        harness.pick_port(closed_port)


def test_kafka_start_on_a_taken_port_is_a_user_error(
    closed_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["kafka", "start", "--port", str(closed_port), "--data-dir", str(tmp_path)]
    assert main(argv) == 2
    assert "choose another --port" in capsys.readouterr().err
