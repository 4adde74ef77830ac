"""`abrouter ...`: parses arguments, builds the objects, runs them, maps errors to exit codes.

Exit codes: 0 success; 2 bad input (a `UserError`: a bad flag, config or summary file),
with one line; 1 a runtime failure (an `AbrouterError` or `OSError`: Redis unreachable,
a port in use), with one line; 1 a bug (anything else), with the traceback in the log;
130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import sys

from abrouter.analysis import commands as analysis_commands
from abrouter.analysis import reporting
from abrouter.demo import commands as demo_commands
from abrouter.errors import AbrouterError, UserError
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
    reporting.register(sub)
    demo_commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except UserError as exc:  # ConfigError, InputError, bad flag values: the user's input
        print(f"abrouter: error: {exc}", file=sys.stderr)
        return 2
    except AbrouterError as exc:  # a runtime failure we know, not a bug
        print(f"abrouter: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"abrouter: error: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception:  # a bug: the whole story for the report, and not the user's fault
        logging.getLogger("abrouter").exception("internal error (a bug in abrouter; please report it)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
