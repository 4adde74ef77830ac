"""`abrouter ...`: parses arguments, builds the objects, runs them, maps errors to exit codes.

Exit codes: 0 success, 1 a runtime failure (e.g. cannot bind a port), 2 bad input (a bad
flag, config or summary file), always with a one-line message instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from abrouter.analysis import commands as analysis_commands
from abrouter.router import commands as router_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="abrouter",
        description="A/B testing for ML models on Kubernetes: a sticky weighted router (serve) "
        "and a sequential experiment analyzer (analyze, plan).",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default: %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    router_commands.register(sub)
    analysis_commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:  # ConfigError, InputError, bad flag values: the user's input
        print(f"abrouter: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"abrouter: error: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
