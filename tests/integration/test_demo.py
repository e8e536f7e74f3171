"""``rum demo --short`` end to end on the embedded broker, as CI runs it; and Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from stream.demo import COLUMN
from tests.kafka_tools import REPO


def _env() -> dict[str, str]:
    # No RUM_BROKER: the demo must start (and stop) its own embedded broker.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUM_")}
    return {**env, "PYTHONUNBUFFERED": "1"}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _stopped_pids(output: str) -> dict[str, int]:
    line = next(x for x in output.splitlines() if x.startswith("stopped:"))
    return {name: int(pid) for name, pid in re.findall(r"(worker|broker) \(pid (\d+)\)", line)}


def _view(output: str, heading: str) -> tuple[list[str], list[str]]:
    """The two columns of the side-by-side view under the line that starts with ``heading``."""
    lines = output.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(heading))
    left: list[str] = []
    right: list[str] = []
    for line in lines[at + 1 :]:
        if not line.startswith("   ") or not line.strip():
            break
        left.append(line[3 : 3 + COLUMN].strip())
        right.append(line[3 + COLUMN + 2 :].strip())
    return left, right


def _titles(column: list[str]) -> list[str]:
    return [m.group(1) for line in column if (m := re.match(r"\d\. (.+)$", line))]


def _first_reasons(column: list[str]) -> list[str]:
    return [m.group(1) for line in column if (m := re.match(r"because (.+) \d\.\d\d$", line))]


def _same_title(shown: str, full: str) -> bool:
    # Long titles are cut to the column and end with an ellipsis.
    return shown == full or (shown.endswith("…") and full.startswith(shown[:-1]))


def _assert_personal_lists(output: str) -> None:
    """Two users' lists differ; one purchase changes a list and leads its `because`."""
    left, right = _view(output, "── two users with different tastes")
    users = [re.match(r"user (\S+) · ", column[0]) for column in (left, right)]
    assert all(users), (left, right)
    first, second = (m.group(1) for m in users if m)
    assert first != second
    mine, theirs = _titles(left), _titles(right)
    assert len(mine) == len(theirs) == 5, (left, right)
    assert set(mine) != set(theirs), (mine, theirs)
    bought = re.search(
        rf"^── user {first} before and after buying (.+) \(answered in \d+ ms\)$", output, re.M
    )
    assert bought is not None, output
    item = bought.group(1)
    before, after = _view(output, f"── user {first} before and after buying")
    assert before[0].startswith("before · model ") and after[0].startswith("after · model ")
    assert _titles(before) == mine  # the same published list as in the two-user view
    assert len(_titles(after)) == 5 and _titles(after) != _titles(before), (before, after)
    assert not any(_same_title(t, item) for t in _titles(after))  # bought: never recommended
    assert any(_same_title(reason, item) for reason in _first_reasons(after)), after
    assert not any(_same_title(reason, item) for reason in _first_reasons(before)), before
    # The list shown is the one the worker serves over HTTP too.
    assert re.search(
        rf"GET http://127\.0\.0\.1:\d+/recommendations/{first}\?k=5 answers the same", output
    ), output


def _assert_ends_with_what_next(output: str) -> None:
    """The last three lines are the commands to do the same with one's own log, and each
    option they use is one the command has."""
    ending = output.rstrip().rsplit("(`rum kafka start`", 1)[1].split("\n", 1)[1]
    lines = ending.replace("\\\n", " ").splitlines()  # a long command goes on with a backslash
    commands = [" ".join(line.split("#", 1)[0].split()) for line in lines]
    assert len(commands) == 3, lines
    assert commands[0].startswith("rum train --data "), commands
    assert commands[1].endswith("rum worker"), commands
    assert commands[2].startswith("rum replay "), commands
    for command in commands:
        words = command.split()
        name = words[words.index("rum") + 1]
        usage = subprocess.run(
            [sys.executable, "-m", "stream.cli", name, "--help"],
            cwd=REPO,
            env=_env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for option in (w for w in words if w.startswith("--")):
            assert option in usage, (command, option)
        for variable in re.findall(r"\b(RUM_[A-Z_]+)=", command):
            assert variable in usage, (command, variable)


def test_short_demo_shows_live_recommendations_and_stops_everything() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "stream.cli", "demo", "--short"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout
    assert result.returncode == 0, f"{output}\n{result.stderr[-4000:]}"
    assert "embedded broker" in output
    # Recommendations were produced and shown: a block per user, titles not raw ids.
    blocks = re.findall(r"^── user (\S+) · (\d+) purchases replayed", output, re.M)
    assert blocks, output
    assert "last purchases: " in output
    assert re.search(r"^   1\. \S.*\(\d{4}\).*because .*\(\d{4}\) \d\.\d\d", output, re.M), output
    answered = re.search(
        r"(\d+) recommendation messages for \d+ users, (\d+)/(\d+) replayed", output
    )
    assert answered is not None, output
    messages, done, sent = (int(g) for g in answered.groups())
    assert messages > 0 and done == sent == 64
    assert "sent 64, skipped 0, failed 0" in output
    assert re.search(r"^\[ *\d+\.\ds\]   epoch 1/1 done: loss \d", output, re.M), output
    _assert_personal_lists(output)
    _assert_ends_with_what_next(output)
    pids = _stopped_pids(output)
    assert set(pids) == {"worker", "broker"}
    assert all(_gone(pid) for pid in pids.values()), pids
    assert time.monotonic() - started < 240


def _sigint_as_in_a_terminal() -> None:
    # A shell starts background jobs with SIGINT ignored, and children inherit it: when the
    # tests run from one (``make test &``), the demo would never see the Ctrl-C this test sends.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_what_the_demo_started() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "demo", "--short"],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=_sigint_as_in_a_terminal,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "worker started" in line:
                break
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        rest, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(lines) + rest
    assert proc.returncode == 130, output
    assert "interrupted" in output
    assert "Traceback" not in output
    pids = _stopped_pids(output)
    assert set(pids) == {"worker", "broker"}, output
    assert all(_gone(pid) for pid in pids.values()), pids
