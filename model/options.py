"""Command-line options that each carry an environment variable.

Every option of a ``rum`` command can also be set as ``RUM_<COMMAND>_<OPTION>``
(``rum train --data`` reads ``RUM_TRAIN_DATA``), so a variable meant for one
command never changes another; options that are worker settings name their
shared variable explicitly (``--broker``: ``RUM_BROKER``). The help text names
the variable, and the command line wins over the environment.
This module is shared by ``model`` and ``stream`` command lines (``model``
never imports ``stream``, so it lives here).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

ENV_PREFIX = "RUM_"


_TYPE_NAMES: dict[object, str] = {int: "an integer", float: "a number"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _upper(text: str) -> str:
    return text.lstrip("-").replace("-", "_").upper()


def env_name(flag: str, prog: str = "") -> str:
    """``--max-len`` of ``rum train`` -> ``RUM_TRAIN_MAX_LEN``; outside ``rum``: ``RUM_MAX_LEN``.

    The command is the first word after ``rum`` in the parser's ``prog``
    (``rum bench stream`` -> ``RUM_BENCH_``).
    """
    words = prog.split()
    command = f"{_upper(words[1])}_" if len(words) > 1 and words[0] == "rum" else ""
    return f"{ENV_PREFIX}{command}{_upper(flag)}"


def _fail(msg: str) -> NoReturn:
    """A bad variable is a user error: one line on stderr, exit status 2 (as argparse does)."""
    print(msg, file=sys.stderr)
    raise SystemExit(2)


def _from_env(variable: str, raw: str, flag: str, type: Callable[[str], Any]) -> Any:
    try:
        return type(raw)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        expected = _TYPE_NAMES.get(type)
        reason = f"expected {expected}" if expected else str(exc)
        msg = f"error: {variable}={raw!r} (for {flag}): {reason}"
        _fail(msg)


def add_option(
    parser: argparse.ArgumentParser | Any,
    flag: str,
    *,
    type: Callable[[str], Any] = str,
    default: Any = None,
    help: str,
    env: str | None = None,
    choices: list[str] | None = None,
    required: bool = False,
) -> None:
    """Add ``flag`` to ``parser`` with its default taken from ``RUM_<FLAG>`` when set.

    A value from the environment is converted with ``type`` now, so a bad value
    fails at start-up with the variable's name in the message.
    """
    variable = env or env_name(flag, getattr(parser, "prog", ""))
    raw = os.environ.get(variable)
    if raw is not None and raw != "":
        default = _from_env(variable, raw, flag, type)
        if choices is not None and default not in choices:
            msg = f"error: {variable}={raw!r} (for {flag}): expected one of {', '.join(choices)}"
            _fail(msg)
        required = False
    shown = "" if default is None else f" (default: {default})"
    parser.add_argument(
        flag,
        type=type,
        default=default,
        choices=choices,
        required=required,
        help=f"{help}{shown} [env: {variable}]",
    )


def add_flag(
    parser: argparse.ArgumentParser | Any, flag: str, *, help: str, env: str | None = None
) -> None:
    """A boolean switch; its variable set to ``1/true/yes/on`` turns it on (``0/false/no/off``:
    off; anything else is refused)."""
    variable = env or env_name(flag, getattr(parser, "prog", ""))
    raw = os.environ.get(variable, "").strip().lower()
    if raw not in _TRUE | _FALSE:
        msg = f"error: {variable}={raw!r} (for {flag}): expected 1/true/yes/on or 0/false/no/off"
        _fail(msg)
    default = raw in _TRUE
    parser.add_argument(
        flag, action="store_true", default=default, help=f"{help} [env: {variable}]"
    )
