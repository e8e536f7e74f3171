"""``rum demo --short`` end to end on the embedded broker, as CI runs it; and Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

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
