"""``python -m model train|evaluate ...``: the model commands without the stream's ``rum`` entry."""

from __future__ import annotations

import sys

from model.cli import evaluate_main, train_main


def main(argv: list[str]) -> int:
    commands = {"train": train_main, "evaluate": evaluate_main}
    if not argv or argv[0] not in commands:
        print("usage: python -m model {train,evaluate} [options]", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
