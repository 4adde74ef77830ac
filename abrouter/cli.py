"""`abrouter ...`: parses arguments, builds the objects, runs them, maps errors to exit codes.

Exit codes: 0 success; 2 bad input (a bad flag, a `UserError`: a config or summary
file), with one line; 1 a runtime failure (an `AbrouterError` or `OSError`: Redis
unreachable, a port in use), with one line; 1 a bug (anything else), with the traceback
in the log; 130 on Ctrl-C, with one line.

Every command module registers its flags without importing what the command needs to
run (numpy, scipy, Redis, matplotlib, the Kubernetes client): those are imported by the
command that runs, so ``abrouter serve`` and ``abrouter --help`` start fast (pip's
``commands_dict`` does the same).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn, cast

from abrouter.errors import AbrouterError, UserError


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line: what is wrong, and where to read more."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Version(argparse.Action):
    """``--version``: the package's, and which build of the data path loads, compiled or pure Python (the
    per-request code: HTTP/1.1, HTTP/2, the gRPC relay, the exchange, the event log's encoding)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib.metadata import version

        from abrouter.router.h2 import native

        print(f"abrouter {version('abrouter')}; data path: {native.mode()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    # Imported here, not at the top: a Ctrl-C during imports is then handled by `main`.
    from abrouter.analysis import commands as analysis_commands
    from abrouter.analysis import reporting
    from abrouter.demo import commands as demo_commands
    from abrouter.router import commands as router_commands

    parser = Parser(
        prog="abrouter",
        description="A/B testing for ML models on Kubernetes: a sticky weighted router (serve) "
        "and a sequential experiment analyzer (analyze, plan).",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="version, and whether the data path is compiled")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default: %(default)s)",
    )
    # Each subcommand's parser is a `Parser` too (argparse makes them of the parent's class).
    sub = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", metavar="COMMAND", required=True),
    )
    router_commands.register(sub)
    analysis_commands.register(sub)
    reporting.register(sub)
    demo_commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (also for --help and usage errors)."""
    try:
        return _run(argv)
    except KeyboardInterrupt:  # Ctrl-C, wherever it lands: one line, no traceback
        print("abrouter: interrupted", file=sys.stderr, flush=True)
        return 130


def _run(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already said on one line)
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except UserError as exc:  # ConfigError, InputError, bad flag values: the user's input
        return _fail(str(exc), 2)
    except AbrouterError as exc:  # a runtime failure we know, not a bug
        return _fail(str(exc), 1)
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), 1)
    except Exception:  # a bug: the whole story for the report, and not the user's fault
        logging.getLogger("abrouter").exception("internal error (a bug in abrouter; please report it)")
        return 1


def _fail(message: str, code: int) -> int:
    print(f"abrouter: error: {message}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
