"""The README's generated parts match the code, and the deployment files say what it says."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from stream.cli import main
from stream.readme import SETTINGS_END, SETTINGS_START, current_block, settings_block
from stream.settings import Settings

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def test_settings_table_in_readme_matches_the_code() -> None:
    assert current_block(_readme()) == settings_block(), (
        "README.md's settings table is out of date: run `rum settings-table --readme README.md`"
    )
    for f in fields(Settings):
        assert f"| `{f.metadata['env']}` |" in _readme()


def test_rum_settings_table_rewrites_a_stale_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "README.md"
    stale.write_text(f"# x\n\n{SETTINGS_START}\n| old |\n{SETTINGS_END}\n\nafter\n")
    assert main(["settings-table", "--readme", str(stale)]) == 0
    text = stale.read_text()
    assert current_block(text) == settings_block()
    assert text.startswith("# x\n\n") and text.endswith("\n\nafter\n")
    assert main(["settings-table", "--readme", str(stale)]) == 0
    assert "up to date" in capsys.readouterr().out
    missing = tmp_path / "OTHER.md"
    missing.write_text("no markers\n")
    assert main(["settings-table", "--readme", str(missing)]) == 2


def test_subscriber_example_in_readme_is_the_tested_file() -> None:
    start = r"<!-- subscriber-example:start[^\n]*-->\n```python\n"
    match = re.search(start + r"(.*?)```\n<!-- subscriber-example:end -->", _readme(), re.S)
    assert match is not None, "README.md lacks the subscriber example block"
    assert match.group(1) == (REPO / "deploy" / "examples" / "subscriber.py").read_text()


def test_readme_gives_exactly_two_commands_for_a_fresh_clone() -> None:
    section = _readme().split("## On a fresh clone", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    commands = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo: .*\n\t\$\(BIN\)/rum demo$", makefile, re.M)


def test_procfile_and_compose_run_the_worker_and_the_trainer() -> None:
    procfile = (REPO / "Procfile").read_text().splitlines()
    assert procfile == ["worker: rum worker", "trainer: rum trainer"]
    compose = (REPO / "deploy" / "docker-compose.yml").read_text()
    assert re.search(r"image: apache/kafka:4\.", compose)
    assert "KAFKA_PROCESS_ROLES: broker,controller" in compose
    assert 'command: ["rum", "worker"]' in compose
    assert 'command: ["rum", "trainer"]' in compose
    # Every worker variable the compose file sets is one the worker reads.
    known = {f.metadata["env"] for f in fields(Settings)}
    used = set(re.findall(r"\b(RUM_[A-Z_]+):", compose))
    assert used and used <= known, used - known
