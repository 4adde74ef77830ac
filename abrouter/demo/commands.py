"""`abrouter demo`: argument parsing only; the loop is in `abrouter.demo.run`."""

from __future__ import annotations

import argparse
import asyncio
import math
from pathlib import Path

from abrouter.demo import run
from abrouter.errors import UserError

EPILOG = """\
examples:
  abrouter demo                          # 60 s, the default lift of +10% CTR
  abrouter demo --duration 30 --seed 7   # shorter, another world
  abrouter demo --lift 0                 # the same model in both arms: no promotion expected

Everything runs on 127.0.0.1: a private Redis (or $REDIS_URL), two model servers
(a popularity baseline and a personalised model, trained at start on a synthetic
user-item world with a known ground truth, serving the Open Inference Protocol), the
real `abrouter serve` in front of them, simulated users who click by the ground truth
and report impressions and clicks, and `abrouter analyze --every 2 --apply`, whose
ramps, promotion or rollback rewrite the weights the router follows. It stops early
once the candidate is promoted or rolled back, writes DIR/report.html and stops every
process it started (also on Ctrl-C).
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
    d = run.Options()
    p.add_argument("--duration", type=float, default=d.duration_s, metavar="SECONDS",
                   help="at most this long (default: %(default)s)")  # fmt: skip
    p.add_argument("--seed", type=int, default=d.seed, help="the world and the users (default: %(default)s)")
    p.add_argument("--lift", type=float, default=d.lift,
                   help="the candidate's true CTR over the control's, minus 1 (default: %(default)s)")  # fmt: skip
    p.add_argument("--users", type=int, default=d.users, help="simulated users (default: %(default)s)")
    p.add_argument("--rps", type=float, default=d.rps, help="requests per second (default: %(default)s)")
    p.add_argument("--out", type=Path, default=d.out, metavar="DIR",
                   help="for the config, the spill dir and report.html (default: %(default)s)")  # fmt: skip
    p.set_defaults(func=demo)


def demo(args: argparse.Namespace) -> int:
    checks = (("duration", args.duration > 0), ("rps", 0 < args.rps <= 5000), ("users", args.users >= 10),
              ("lift", 0 <= args.lift <= 0.4))  # fmt: skip
    for name, ok in checks:
        value = getattr(args, name)
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            raise UserError(f"--{name}: out of range, got {value} (see abrouter demo --help)")
    options = run.Options(duration_s=args.duration, seed=args.seed, lift=args.lift, users=args.users, rps=args.rps,
                          out=args.out)  # fmt: skip
    return asyncio.run(run.run(options))
