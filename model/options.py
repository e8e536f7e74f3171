"""Command-line options that each carry an environment variable.

Every option of the ``rum`` commands can also be set as ``RUM_<NAME>``; the
help text names the variable, and the command line wins over the environment.
This module is shared by ``model`` and ``stream`` command lines (``model``
never imports ``stream``, so it lives here).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

ENV_PREFIX = "RUM_"


def env_name(flag: str) -> str:
    """``--max-len`` -> ``RUM_MAX_LEN``."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


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
    variable = env or env_name(flag)
    raw = os.environ.get(variable)
    if raw is not None and raw != "":
        try:
            default = type(raw)
        except (TypeError, ValueError) as exc:
            msg = f"environment variable {variable}={raw!r} is not a valid value for {flag}: {exc}"
            raise SystemExit(msg) from exc
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


def add_flag(parser: argparse.ArgumentParser | Any, flag: str, *, help: str) -> None:
    """A boolean switch; ``RUM_<FLAG>=1/true/yes`` turns it on."""
    variable = env_name(flag)
    default = os.environ.get(variable, "").strip().lower() in {"1", "true", "yes", "on"}
    parser.add_argument(
        flag, action="store_true", default=default, help=f"{help} [env: {variable}]"
    )
