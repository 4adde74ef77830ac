"""`abrouter demo`: argument parsing only; the loop is in `abrouter.demo.run`."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from abrouter import argtypes
from abrouter.demo.options import Options
from abrouter.errors import UserError

EPILOG = """\
examples:
  abrouter demo                          # 60 s, the default lift of +10% CTR
  abrouter demo --duration 30 --seed 7   # shorter, another world
  abrouter demo --lift 0                 # the same model in both arms: no promotion expected

Everything runs on 127.0.0.1: a private Redis (or $REDIS_URL), model servers (a
popularity baseline and a personalised model, trained at start on a synthetic user-item
world with a known ground truth, serving the Open Inference Protocol), the real
`abrouter serve` in front of them, simulated users who click by the ground truth and
report impressions and clicks, and `abrouter analyze --every 2 --apply`, whose ramps,
promotion or rollback rewrite the weights the router follows. The same router and
analyzer run a second experiment, demo-ranker, on another model name (a sixth of the
rate; a far worse candidate, which the analyzer rolls back). The --duration clock starts
at the analyzer's first look (a busy machine starts slowly). It stops early once the main
candidate is promoted or rolled back, writes DIR/report.html (the main experiment's) and
DIR/reports/ (both, and an index), and stops every process it started (also on Ctrl-C:
one line, exit code 130). One demo at a time per DIR; the children's logs are
DIR/serve.log, DIR/analyze.log and DIR/report.log. From the demo to your own models:
docs/demo.md.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run a whole A/B test of two recommendation models on this machine, with a live view and a report",
        description="A/B test two recommendation models end to end on 127.0.0.1: route, log, analyze, ramp, "
        "promote (or roll back), and write an HTML report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = Options()
    p.add_argument("--duration", type=argtypes.positive, default=d.duration_s, metavar="SECONDS",
                   help="at most this long (default: %(default)s)")  # fmt: skip
    p.add_argument("--seed", type=int, default=d.seed, help="the world and the users (default: %(default)s)")
    p.add_argument("--lift", type=argtypes.non_negative, default=d.lift,
                   help="the candidate's true CTR over the control's, minus 1 (default: %(default)s)")  # fmt: skip
    p.add_argument("--users", type=argtypes.at_least(10), default=d.users,
                   help="simulated users (default: %(default)s)")  # fmt: skip
    p.add_argument("--rps", type=argtypes.positive, default=d.rps, help="requests per second (default: %(default)s)")
    p.add_argument("--out", type=Path, default=d.out, metavar="DIR",
                   help="for the configs, the spill dir, report.html and reports/ (default: %(default)s)")  # fmt: skip
    p.set_defaults(func=demo)


def demo(args: argparse.Namespace) -> int:
    # Each flag's type checks that it is a finite number; these are the demo's own bounds.
    for name, value, high in (("rps", args.rps, 5000), ("lift", args.lift, 0.4)):
        if value > high:
            raise UserError(f"--{name}: must be at most {high:g}, got {value:g} (see abrouter demo --help)")
    _check_redis_url()
    from abrouter.demo import run  # aiohttp, redis, numpy: only when the demo runs

    options = Options(duration_s=args.duration, seed=args.seed, lift=args.lift, users=args.users, rps=args.rps,
                          out=args.out)  # fmt: skip
    try:
        return asyncio.run(run.run(options))
    except KeyboardInterrupt:  # the children run in their own sessions: the demo stopped them
        print("abrouter demo: interrupted; every process it started is stopped (no report)", flush=True)
        return 130


def _check_redis_url() -> None:
    url = os.environ.get("REDIS_URL")
    if url:
        try:
            argtypes.redis_url(url)
        except argparse.ArgumentTypeError as exc:
            raise UserError(f"$REDIS_URL {exc}") from None
