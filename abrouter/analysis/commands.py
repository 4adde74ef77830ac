"""`abrouter analyze` and `abrouter plan`: argument parsing and wiring only.

Each command's ``func`` returns an exit code. Bad input raises a `UserError`
(`InputError`, `ConfigError`), which the CLI turns into exit code 2 and one line; a
Redis or file failure is reported by `abrouter.analysis.runner` as one line with exit
code 1. This module imports nothing heavy: the CLI registers every command with it, and
the statistics (numpy, scipy), Redis and Kubernetes are imported only by the command
that runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from abrouter import argtypes
from abrouter.analysis.errors import InputError
from abrouter.analysis.specfiles import SpecFiles
from abrouter.contract.model import AnalysisSettings

if TYPE_CHECKING:
    from abrouter.analysis.stats.power import Rollout

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: How long one Redis command or connection attempt of analyze and report may take.
REDIS_TIMEOUT_S = 30.0


def add_redis_url(p: argparse.ArgumentParser) -> None:
    """--redis-url of the commands that read what the routers logged (analyze, report)."""
    p.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL),
        type=argtypes.redis_url,
        metavar="URL",
        help="Redis holding the router's aggregates (default: $REDIS_URL, else %(default)s)",
    )
    p.add_argument(
        "--redis-timeout",
        default=REDIS_TIMEOUT_S,
        type=argtypes.positive,
        metavar="SECONDS",
        help="give up on a Redis command or connection after this long: a Redis that stops answering "
        "is a failed look (exit 1), not a hung command (default: %(default)s)",
    )


ANALYZE_EPILOG = """\
examples:
  abrouter analyze --config exp.yaml                       # one look, a report table
  abrouter analyze --config exp.yaml --json                # the same as JSON
  abrouter analyze --config exp.yaml --every 60 --apply    # decide every minute and act
  abrouter analyze --summary export.json                   # sufficient statistics from anywhere
  abrouter analyze --summary sims.jsonl --json             # one JSON result per input line
  abrouter analyze --experiment ns/recsys --apply --every 60   # act through the Kubernetes API
  abrouter analyze --experiment ns/recsys --apply --dry-run    # print what it would write
  abrouter analyze --config a.yaml --config b.yaml --every 60 --apply   # several, one process
  abrouter analyze --experiments ns --apply --every 60 --lease abrouter-analyzer
                                                  # every Experiment of ns, one leader at a time

With --config, the aggregates are read from Redis through the router's key schema, every
decision is appended to the experiment's history stream, and with --apply the new
weights are written to the config file (a new epoch; the router reloads it). Without
--apply nothing but the history is written. With --experiment NAMESPACE/NAME, the spec
comes from the Experiment resource and --apply patches its weights (guarded by
resourceVersion), writes its status and creates Events (see docs/kubernetes.md);
--dry-run prints those writes instead of making them. Outside the cluster the API is
reached through $KUBECONFIG (or --kubeconfig), and Redis through --redis-url, e.g. a
`kubectl port-forward svc/redis 6379` (docs/kubernetes.md, "Outside the cluster").
With --config several times or --experiments NAMESPACE
(every Experiment of the namespace, or those matching --selector, listed again every
interval), one process looks at each experiment on its own schedule: every SECONDS, at a
phase of its own so that they do not all look at once; a failing experiment backs off
without stopping the others. --lease NAME elects one leader through a Lease, so that only
one replica acts. SIGTERM stops it between two looks. Decisions use always-valid
sequential tests, so looking every minute does not inflate false promotions.
"""

PLAN_EPILOG = """\
examples:
  abrouter plan --baseline 0.05 --mde 0.01                 # 5% -> 6% conversion, absolute
  abrouter plan --baseline 0.05 --mde 0.1 --relative       # 5% -> 5.5%, a 10% relative lift
  abrouter plan --baseline 0.05 --mde 0.1 --relative --variants 3 --traffic 20000
  abrouter plan --baseline 0.05 --mde 0.1 --relative --config exp.yaml --traffic 20000

Convention: a two-sided two-proportion z-test at level alpha with the unpooled variance
under the alternative, n = (z[1-a/2] + z[power])^2 (p1(1-p1) + p2(1-p2)) / (p2-p1)^2
units per arm, with alpha split over the comparisons with the control (Bonferroni) for
more than two variants. The analyzer counts only the final ramp step's data, and the
step into it waits for the burn-in, so the total adds the ramp's earlier steps or the
burn-in's users, whichever is more (--ramp, --burn-in, --min-units-per-arm: the spec's
values; --balanced when it sets analysis.ramp_rest, whose users are not compared; with
--config they, --variants and --alpha are read from the spec, and a flag given wins);
duration = that total / --traffic, assuming every unit is new. n itself is a
fixed-horizon size. The analyzer's promotion test spends alpha on information time up to
analysis.expected_units_per_arm: set it to this n and it has about the same power at n,
and can stop earlier when the effect is larger.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _register_analyze(subparsers)
    _register_plan(subparsers)


def _register_analyze(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="analyze experiments and decide: continue, ramp, promote, rollback or stop",
        description="Analyze an experiment, or many in one process, from Redis (--config, --experiment, "
        "--experiments) or from exported sufficient statistics (--summary), and explain each decision in one line.",
        epilog=ANALYZE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--config",
        type=Path,
        action="append",
        metavar="FILE",
        help="experiment YAML; data from Redis (several times: several experiments in one process)",
    )
    source.add_argument(
        "--summary",
        type=Path,
        metavar="FILE",
        help="summary JSON, or .jsonl with one summary per line (see docs/analyzer.md)",
    )
    source.add_argument(
        "--experiment",
        metavar="NAMESPACE/NAME",
        help="an Experiment resource through the Kubernetes API; data from Redis",
    )
    source.add_argument(
        "--experiments",
        metavar="NAMESPACE",
        help="every Experiment of NAMESPACE (added and deleted ones followed); data from Redis",
    )
    p.add_argument(
        "--selector",
        metavar="LABELS",
        help="with --experiments: only the Experiments matching this label selector (e.g. team=search,tier!=dev)",
    )
    p.add_argument(
        "--lease",
        metavar="NAME",
        help="with --experiments and --every: act only while this process holds the Lease NAME "
        "(leader election; one replica acts, the others stand by)",
    )
    p.add_argument(
        "--kubeconfig",
        type=Path,
        metavar="PATH",
        help="with --experiment(s): the kubeconfig (default: in a pod the in-cluster config, "
        "else $KUBECONFIG, else ~/.kube/config; its current context's user and cluster)",
    )
    add_redis_url(p)
    when = p.add_mutually_exclusive_group()
    when.add_argument("--once", action="store_true", help="analyze once and exit (the default)")
    when.add_argument(
        "--every",
        type=argtypes.positive,
        metavar="SECONDS",
        help="analyze again every SECONDS until Ctrl-C or SIGTERM (each experiment at a phase of its own)",
    )
    p.add_argument("--json", action="store_true", help="print JSON (one object per line) instead of a table")
    p.add_argument(
        "--apply",
        action="store_true",
        help="act on the decision: write the new weights to the --config file or the --experiment resource",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="with --experiment(s): print what --apply would write, and write nothing"
    )
    p.set_defaults(func=analyze)


def _register_plan(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "plan",
        help="sample size and duration for a conversion experiment",
        description="How many units a conversion experiment needs to detect a given effect.",
        epilog=PLAN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--baseline", type=float, required=True, metavar="P", help="control conversion rate, a fraction (0.05 = 5%%)"
    )
    p.add_argument(
        "--mde",
        type=float,
        required=True,
        help="minimum detectable effect: absolute (0.01 = one point), or relative with --relative",
    )
    p.add_argument("--relative", action="store_true", help="--mde is relative to the baseline (0.1 = +10%%)")
    p.add_argument("--power", type=float, default=0.8, help="chance to detect the effect (default: %(default)s)")
    defaults = AnalysisSettings()
    p.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help="an experiment spec: --variants (its compared arms), --alpha, --ramp, --balanced, "
        "--min-units-per-arm and --burn-in are read from it; a flag given too wins",
    )
    p.add_argument(
        "--alpha", type=float, help=f"two-sided false-positive rate (default: the spec's, else {defaults.alpha})"
    )
    p.add_argument(
        "--variants", type=int, help="arms including the control (default: the spec's compared arms, else 2)"
    )
    p.add_argument(
        "--traffic",
        type=float,
        metavar="UNITS_PER_DAY",
        help="new units per day entering the experiment, for the expected duration",
    )
    ramp = ",".join(f"{s:g}" for s in defaults.ramp)
    p.add_argument(
        "--ramp",
        type=_percents,
        metavar=ramp,
        help=f"the spec's analysis.ramp: the candidates' share per step, percent ('' for none; default: {ramp})",
    )
    p.add_argument(
        "--balanced",
        action="store_true",
        help="the spec sets analysis.ramp_rest: the control has each candidate's share at every step",
    )
    p.add_argument(
        "--min-units-per-arm",
        type=int,
        help=f"the spec's analysis.min_units_per_arm (default: {defaults.min_units_per_arm})",
    )
    p.add_argument(
        "--burn-in",
        type=float,
        metavar="DAYS",
        help=f"the spec's analysis.burn_in, in days (default: {defaults.burn_in_s / 86400:g})",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=plan)


def _percents(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of percentages, got {text!r}") from None


# ------------------------------------------------------------------------ analyze


def analyze(args: argparse.Namespace) -> int:
    if args.summary is not None:
        if args.apply or args.every is not None:
            raise InputError("", "--apply and --every need --config (a summary has no weights to change)")
        if args.selector is not None or args.lease is not None:
            raise InputError("", "--selector and --lease need --experiments NAMESPACE")
        from abrouter.analysis import runner

        return runner.analyze_summary(args.summary, as_json=args.json, out=sys.stdout)
    _check_many(args)
    files = SpecFiles()
    if args.experiments is None and args.experiment is None:
        _load_configs(args.config, files)  # bad config: fail now, with exit code 2, not inside the loop
    if args.experiments is not None or len(args.config or ()) > 1:
        from abrouter.analysis import many  # numpy, scipy, redis: only when analyze runs

        return asyncio.run(many.analyze_many(args, files))
    from abrouter.analysis import runner

    if args.experiment is not None:
        return asyncio.run(runner.analyze_kube(args))
    return asyncio.run(runner.analyze_redis(args))


_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
#: One requirement of a label selector: ``key``, ``!key``, ``key=v``, ``key==v``, ``key!=v``,
#: ``key in (a,b)``, ``key notin (a,b)``; a key may have a DNS prefix (``app.kubernetes.io/name``).
_REQUIREMENT = re.compile(
    r"^\s*(!\s*)?[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
    r"(\s*(==|=|!=)\s*([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?|\s+(in|notin)\s*\([^()]*\))?\s*$"
)


def _check_many(args: argparse.Namespace) -> None:
    """The flags of several experiments, and the Kubernetes ones, used only where they mean something."""
    kube = args.experiment is not None or args.experiments is not None
    if not kube and (args.kubeconfig is not None or args.dry_run):
        raise InputError("", "--kubeconfig and --dry-run need --experiment NAMESPACE/NAME or --experiments NAMESPACE")
    if args.selector is not None and args.experiments is None:
        raise InputError("--selector", "needs --experiments NAMESPACE (it chooses among a namespace's Experiments)")
    if args.lease is not None and (args.experiments is None or args.every is None):
        raise InputError(
            "--lease", "needs --experiments NAMESPACE and --every SECONDS (it elects a long-running leader)"
        )
    if args.experiments is not None and not _LABEL.match(args.experiments):
        raise InputError("--experiments", f"must be a namespace (a lowercase DNS label), got {args.experiments!r}")
    if args.lease is not None and not _LABEL.match(args.lease):
        raise InputError("--lease", f"must be a Lease name (a lowercase DNS label), got {args.lease!r}")
    selector = args.selector or ""
    parts = re.split(r",(?![^(]*\))", selector)
    if args.selector is not None and not all(_REQUIREMENT.match(p) for p in parts):
        raise InputError("--selector", f"is not a label selector (e.g. team=search,tier!=dev), got {selector!r}")


def _load_configs(paths: list[Path], files: SpecFiles) -> None:
    """Load every --config (exit 2 on the first bad one); two files of one experiment are refused."""
    seen: dict[str, Path] = {}
    for path in paths:
        name = files.load(path).name
        if name in seen:
            raise InputError(
                "--config", f"{seen[name]} and {path} both name experiment {name!r}; give each experiment once"
            )
        seen[name] = path


# --------------------------------------------------------------------------- plan


def plan(args: argparse.Namespace) -> int:
    _plan_settings(args)
    _check_plan(args)
    from abrouter.analysis.stats.power import rollout, sample_size  # scipy: only when plan runs

    result = sample_size(
        baseline=args.baseline,
        mde=args.mde,
        relative=args.relative,
        power=args.power,
        alpha=args.alpha,
        variants=args.variants,
    )
    steps = rollout(
        result,
        ramp=args.ramp,
        min_units_per_arm=args.min_units_per_arm,
        burn_in_s=args.burn_in * 86400,
        traffic=args.traffic,
        balanced=args.balanced,
    )
    days = steps.days
    if args.json:
        doc = {
            "units_per_arm": result.units_per_arm,
            "total_units": result.total_units,
            "baseline": result.baseline,
            "target": result.target,
            "alpha": result.alpha,
            "power": result.power,
            "variants": result.variants,
            "days": days,
            "ramp_units": steps.ramp_units,
            "burn_in_units": steps.burn_in_units,
            "final_units": steps.final_units,
            "total_units_with_ramp": steps.total_units,
            "balanced": args.balanced,
            "convention": result.convention,
        }
        print(json.dumps(doc))
        return 0
    print(
        f"baseline {result.baseline:g} -> target {result.target:g} "
        f"(alpha {result.alpha:g} two-sided, power {result.power:g}, {result.variants} variants)"
    )
    print(f"units per arm: {result.units_per_arm:,} (set analysis.expected_units_per_arm to this)")
    print(f"total units:   {result.total_units:,} (fixed horizon, at an even split, nothing else)")
    _print_rollout(steps, args)
    if days is not None:
        print(f"duration:      {days:.1f} days at {args.traffic:,.0f} units/day")
    print(
        "sequential:    the analyzer's promotion test counts only the final ramp step's data; with n there "
        "it has about the planned power (simulated at this total with the default ramp: docs/statistics.md); "
        "looking often is safe"
    )
    print(f"convention:    {result.convention}")
    return 0


def _print_rollout(steps: Rollout, args: argparse.Namespace) -> None:
    ramp = ", ".join(f"{s:g}%" for s in args.ramp) or "none"
    ramp += ", balanced" if args.balanced and args.ramp else ""
    print(f"ramp ({ramp}): {steps.ramp_units:,} units before the final step ({args.min_units_per_arm} per arm each)")
    arriving = f"{steps.burn_in_units:,} units arrive in it" if steps.burn_in_units is not None else "give --traffic"
    where = "the step into the final one waits for it" if args.ramp else "no promotion before its end"
    print(f"burn-in:       {args.burn_in:g} day(s) from the start ({where}; {arriving})")
    print(f"final step:    {steps.final_units:,} units for n per arm at the final split")
    if steps.total_units is not None:
        print(
            f"with the ramp: {steps.total_units:,} units in all (if the guardrails pass as soon as each step is full)"
        )


def _plan_settings(args: argparse.Namespace) -> None:
    """Fill what no flag gave from --config's spec, else from `AnalysisSettings` (each default written once)."""
    settings, variants, rest = AnalysisSettings(), 2, None
    if args.config is not None:
        experiment = SpecFiles().load(args.config)  # a bad spec: ConfigError, exit 2 naming the file and field
        settings, rest = experiment.analysis, experiment.analysis.ramp_rest
        variants = sum(1 for v in experiment.variants if not v.shadow and v.name != rest)
    args.variants = variants if args.variants is None else args.variants
    args.alpha = settings.alpha if args.alpha is None else args.alpha
    args.ramp = settings.ramp if args.ramp is None else args.ramp
    args.balanced = args.balanced or rest is not None
    args.min_units_per_arm = settings.min_units_per_arm if args.min_units_per_arm is None else args.min_units_per_arm
    args.burn_in = settings.burn_in_s / 86400 if args.burn_in is None else args.burn_in


def _check_plan(args: argparse.Namespace) -> None:
    def between(name: str, value: float, low: float, high: float) -> None:
        if not (low < value < high):
            raise InputError(f"--{name}", f"must be between {low:g} and {high:g} (exclusive), got {value:g}")

    between("baseline", args.baseline, 0, 1)
    between("power", args.power, 0, 1)
    between("alpha", args.alpha, 0, 1)
    if not (args.mde > 0 and math.isfinite(args.mde)):
        raise InputError("--mde", f"must be > 0, got {args.mde:g}")
    target = args.baseline * (1 + args.mde) if args.relative else args.baseline + args.mde
    if not target < 1:
        raise InputError("--mde", f"puts the target rate at {target:g}; it must stay below 1")
    if args.variants < 2:
        raise InputError("--variants", f"must be >= 2 (the control and a candidate), got {args.variants}")
    if args.traffic is not None and not (args.traffic > 0 and math.isfinite(args.traffic)):
        raise InputError("--traffic", f"must be > 0 units per day, got {args.traffic:g}")
    if list(args.ramp) != sorted(set(args.ramp)) or not all(0 < s < 100 for s in args.ramp):
        raise InputError("--ramp", f"must be strictly increasing percentages in (0, 100), got {list(args.ramp)}")
    k = args.variants - 1
    if args.balanced and (not args.ramp or args.ramp[-1] * (k + 1) / k > 100):
        raise InputError("--balanced", "needs a --ramp whose final step leaves the control each candidate's share")
    if args.min_units_per_arm < 2:
        raise InputError("--min-units-per-arm", f"must be >= 2, got {args.min_units_per_arm}")
    if not (args.burn_in >= 0 and math.isfinite(args.burn_in)):
        raise InputError("--burn-in", f"must be >= 0 days, got {args.burn_in:g}")
