"""`abrouter serve` and `abrouter example-model`: argument parsing and process setup only."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from abrouter import argtypes
from abrouter.contract import experiment as model
from abrouter.contract import keys
from abrouter.errors import UserError
from abrouter.redact import mask_url
from abrouter.router import examples, serving
from abrouter.router.connections import Limits
from abrouter.router.matching import Gateway
from abrouter.router.redis_server import RedisServer
from abrouter.router.settings import ServeSettings, api_token_from_env, secret_from_env, secret_problem
from abrouter.router.sources.base import SpecSource
from abrouter.router.sources.file import FileSource
from abrouter.router.workers import parse_count as parse_workers

if TYPE_CHECKING:
    from abrouter.router.sources.catalog import CatalogSource
    from abrouter.router.sources.kube import KubeSource

log = logging.getLogger("abrouter")

EXAMPLE_PORTS = (18181, 18182)
#: The example models' arms and names, in the bundled experiment's order.
EXAMPLE_MODELS = (("control", "model-a"), ("candidate", "model-b"))

SERVE_EPILOG = """\
examples:
  abrouter serve                                  # the example experiment, example models, private Redis
  abrouter serve --config exp.yaml --redis-url redis://redis:6379/0 --port 8080
  abrouter serve --experiment default/recsys --redis-url redis://redis:6379/0   # in a pod
  abrouter serve --config recsys.yaml --config ranker.yaml     # two experiments, one port
  abrouter serve --experiments ml --selector team=recs         # every Experiment of a namespace
  abrouter serve --config exp.yaml --grpc-port 8081   # gRPC too: each variant names its grpc_upstream

With no --config, abrouter serves its bundled example experiment in front of two
example model servers it starts on 127.0.0.1:18181 and :18182. With no --redis-url (and
no REDIS_URL), it starts a private redis-server for the event log and stops it on exit.
The config file is re-read every --reload-interval seconds: new weights (with a raised
`epoch`) take effect without a restart. With --experiment, the spec comes from the
Experiment resource and every change of it applies within a second or two; its epoch is
the object's metadata.generation. Reserved endpoints live under /abrouter/.

Several experiments (--config more than once, or --experiments NAMESPACE, where
Experiments added, changed and deleted are followed live) share the port: each
experiment's `match:` (model name, path, host, headers) says which requests are its,
and a request no experiment takes gets 404 with code no_experiment (docs/gateway.md).
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the A/B router (reverse proxy)",
        description="Run the sticky, weighted A/B reverse proxy.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--config",
        type=Path,
        action="append",
        help="experiment YAML; give it again for each further experiment (default: the bundled example)",
    )
    where.add_argument(
        "--experiment",
        metavar="NAMESPACE/NAME",
        help="follow an Experiment resource through the Kubernetes API (list, then watch)",
    )
    where.add_argument(
        "--experiments",
        metavar="NAMESPACE",
        type=argtypes.namespace,
        help="follow every Experiment of a namespace, added, changed and deleted live",
    )
    p.add_argument(
        "--selector",
        default="",
        metavar="LABELS",
        help="with --experiments: only the Experiments with these labels (a label selector, e.g. team=recs)",
    )
    p.add_argument(
        "--kubeconfig",
        type=Path,
        metavar="PATH",
        help="with --experiment or --experiments: the kubeconfig to use (default: in a pod the in-cluster "
        "config, else $KUBECONFIG or ~/.kube/config)",
    )
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=argtypes.port, default=8080, help="port to listen on (default: %(default)s)")
    p.add_argument(
        "--grpc-port",
        type=argtypes.port,
        default=os.environ.get("ABROUTER_GRPC_PORT") or None,
        metavar="PORT",
        help="also listen for gRPC (HTTP/2 cleartext) on this port, proxying any service to each variant's "
        "grpc_upstream (every variant needs one) (default: $ABROUTER_GRPC_PORT, else no gRPC listener)",
    )
    p.add_argument(
        "--grpc-server",
        choices=("own", "grpcio"),
        default=os.environ.get("ABROUTER_GRPC_SERVER") or "own",
        help="with --grpc-port: 'own' serves gRPC on the router's own HTTP/2 server and client, relaying "
        "frames (several times the calls per core); 'grpcio' on grpc.aio's server and channels, message by "
        "message (default: $ABROUTER_GRPC_SERVER, else %(default)s)",
    )
    p.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        type=argtypes.redis_url,
        metavar="URL",
        help="Redis for the event log (default: $REDIS_URL, else a private embedded redis-server)",
    )
    p.add_argument(
        "--example-ports",
        type=argtypes.port_pair,
        default=EXAMPLE_PORTS,
        metavar="CONTROL,CANDIDATE",
        help="with no --config: the ports of the two example models on 127.0.0.1 "
        f"(default: {EXAMPLE_PORTS[0]},{EXAMPLE_PORTS[1]})",
    )
    p.add_argument(
        "--spill-dir",
        type=Path,
        default=Path(os.environ.get("ABROUTER_SPILL_DIR", "abrouter-spill")),
        help="where events wait while Redis is unreachable (default: %(default)s)",
    )
    p.add_argument(
        "--flush-interval",
        type=argtypes.positive,
        default=0.25,
        metavar="SECONDS",
        help="seconds between event-log flushes (default: %(default)s)",
    )
    p.add_argument(
        "--shards",
        type=argtypes.shards,
        default=os.environ.get("ABROUTER_SHARDS", "auto"),
        metavar="N",
        help="over how many hash tags a new experiment's per-unit state and sums are spread, so that one "
        "experiment uses several Redis Cluster masters (one tag is one slot, one master's core): an integer "
        f"1..{keys.MAX_SHARDS}, or 'auto' for 1 on a single Redis and {keys.CLUSTER_SHARDS} on a cluster; an "
        "experiment already in Redis keeps the count stored with it (default: $ABROUTER_SHARDS, else %(default)s)",
    )
    p.add_argument(
        "--reload-interval",
        type=argtypes.positive,
        default=1.0,
        metavar="SECONDS",
        help="seconds between checks of the config file (default: %(default)s)",
    )
    p.add_argument(
        "--no-event-log",
        action="store_true",
        help="record nothing (a plain weighted proxy; used to measure the event log's cost)",
    )
    p.add_argument(
        "--upstream-transport",
        choices=("aiohttp", "httptools"),
        default="httptools",
        help="HTTP client for the upstream leg: abrouter's own keep-alive client on httptools, or "
        "aiohttp's ClientSession (about 0.6x the requests per core) (default: %(default)s)",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=argtypes.positive,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, how long in-flight requests may take to finish (default: %(default)s)",
    )
    limits = Limits()
    p.add_argument(
        "--header-timeout",
        type=argtypes.positive,
        default=os.environ.get("ABROUTER_HEADER_TIMEOUT", limits.header_s),
        metavar="SECONDS",
        help="close a connection whose request headers are not complete this long after their first byte "
        "(or after the connection opened, for its first request) (default: $ABROUTER_HEADER_TIMEOUT, "
        "else %(default)s)",
    )
    p.add_argument(
        "--body-timeout",
        type=argtypes.positive,
        default=os.environ.get("ABROUTER_BODY_TIMEOUT", limits.body_idle_s),
        metavar="SECONDS",
        help="close a connection whose request body stops arriving for this long; a body that keeps "
        "coming is never cut (default: $ABROUTER_BODY_TIMEOUT, else %(default)s)",
    )
    p.add_argument(
        "--idle-timeout",
        type=argtypes.positive,
        default=os.environ.get("ABROUTER_IDLE_TIMEOUT", limits.idle_s),
        metavar="SECONDS",
        help="close a kept-alive connection idle this long between two requests; keep it above the "
        "keep-alive of a proxy in front (ingress-nginx, AWS: 60 s) (default: $ABROUTER_IDLE_TIMEOUT, "
        "else %(default)s)",
    )
    p.add_argument(
        "--max-connections",
        type=argtypes.at_least(1),
        default=os.environ.get("ABROUTER_MAX_CONNECTIONS", limits.max_connections),
        metavar="N",
        help="answer 503 and close new connections while N are open (default: $ABROUTER_MAX_CONNECTIONS, "
        "else %(default)s)",
    )
    p.add_argument(
        "--workers",
        default=os.environ.get("ABROUTER_WORKERS", "1"),
        metavar="N",
        help="processes serving one listening socket: an integer, or 'auto' for the cores this process "
        "may use; each has its own event-log producer, /abrouter/metrics sums them all and "
        "/abrouter/readyz is ready only while all serve (default: $ABROUTER_WORKERS, else %(default)s)",
    )
    p.set_defaults(func=serve)

    m = subparsers.add_parser(
        "example-model",
        help="run an example model server (for demos and tests)",
        description="A stand-in recommendation model: POST /predict returns JSON items.",
    )
    m.add_argument("--name", default="control", help="model name in responses (default: %(default)s)")
    m.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    m.add_argument("--port", type=argtypes.port, default=8080, help="port (default: %(default)s)")
    m.add_argument("--delay-ms", type=argtypes.non_negative, default=0.0, help="added latency per request (default: 0)")
    m.set_defaults(func=example_model)


def _check_args(args: argparse.Namespace) -> None:
    """What no one flag's type can check (each number is checked by its `argtypes` type)."""
    if args.kubeconfig is not None and args.experiment is None and args.experiments is None:
        raise UserError("--kubeconfig needs --experiment NAMESPACE/NAME or --experiments NAMESPACE")
    if args.selector and args.experiments is None:
        raise UserError("--selector needs --experiments NAMESPACE")
    if args.example_ports != EXAMPLE_PORTS and (args.config or args.experiment or args.experiments):
        raise UserError("--example-ports moves the bundled example's models: it needs no --config or --experiment")


def _check_grpc(experiment: model.Experiment) -> None:
    """With a gRPC listener every variant needs its gRPC endpoint: the first that has none is named."""
    unit = experiment.unit
    if unit.kind != "header":  # served, but every call would be its own unit: say so once
        log.warning(
            "unit.%s: gRPC calls carry metadata, not %ss: each gRPC call is assigned as its own unit; "
            "use unit: {header: NAME} to keep a caller on one arm over gRPC",
            unit.kind,
            "query parameter" if unit.kind == "query" else unit.kind,
        )
    for i, variant in enumerate(experiment.variants):
        if variant.grpc_upstream is None:
            raise UserError(
                f"--grpc-port: variant {variant.name!r} (variants[{i}]) of experiment {experiment.name!r} has no "
                "grpc_upstream; give every variant its gRPC endpoint, e.g. grpc_upstream: model-a:8001"
            )


def _kube_source(args: argparse.Namespace) -> tuple[model.Experiment, KubeSource]:
    """The initial spec from a get (bad reference or spec: exit 2; API failure: exit 1), and its watch."""
    # Imported here: the Kubernetes client costs ~40 MiB and a second of start-up that a
    # router reading a file never needs.
    from abrouter.contract import resource
    from abrouter.kube.client import KubeClient, Ref
    from abrouter.router.sources.kube import KubeSource

    ref = Ref.parse(args.experiment)
    client = KubeClient.from_config(args.kubeconfig, role="router")
    found = resource.parse(client.get(ref))
    return found.experiment, KubeSource(client, ref, resource_version=found.resource_version)


def _catalog(args: argparse.Namespace) -> tuple[list[model.Experiment], CatalogSource]:
    """The namespace's valid Experiments now (API failure: exit 1), and the watch that follows them."""
    from abrouter.kube.client import KubeClient
    from abrouter.router.sources.catalog import CatalogSource

    client = KubeClient.from_config(args.kubeconfig, role="router")
    return CatalogSource.start(client, args.experiments, selector=args.selector)


def _specs(args: argparse.Namespace) -> tuple[list[model.Experiment], dict[str, SpecSource], CatalogSource | None]:
    """What serve serves from the start, where each spec's changes come from, and the namespace's watch."""
    if args.experiments is not None:
        found, catalog = _catalog(args)
        return found, {}, catalog
    if args.experiment is not None:
        experiment, source = _kube_source(args)
        return [experiment], {experiment.name: source}, None
    experiments: list[model.Experiment] = []
    sources: dict[str, SpecSource] = {}
    for path in args.config or [examples.EXPERIMENT_PATH]:
        experiment = model.load(path)
        if experiment.name in sources:
            raise UserError(f"--config {path}: a second experiment named {experiment.name!r}; names must differ")
        experiments.append(experiment)
        sources[experiment.name] = FileSource(path, interval_s=args.reload_interval)
    Gateway({e.name: e.match for e in experiments})  # two matches that overlap: exit 2, naming both
    return experiments, sources, None


def serve(args: argparse.Namespace) -> int:
    _check_args(args)
    try:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = parse_workers(args.workers, cpus=cpus)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    bundled = args.config is None and args.experiment is None and args.experiments is None
    path = (args.config or [examples.EXPERIMENT_PATH])[0]
    experiments, sources, catalog = _specs(args)
    if args.grpc_port is not None:
        for experiment in experiments:
            _check_grpc(experiment)
    with ExitStack() as stack:
        redis_url = args.redis_url or ""
        private = not redis_url and not args.no_event_log
        if private:
            server = stack.enter_context(RedisServer())
            redis_url = server.url
            log.info("started a private redis-server for the event log: %s", redis_url)
        settings = ServeSettings(
            redis_url=redis_url,
            spill_dir=args.spill_dir,
            flush_interval_s=args.flush_interval,
            shards=args.shards,
            secret=secret_from_env(),
            api_token=api_token_from_env(),
            event_log=not args.no_event_log,
            upstream_transport=args.upstream_transport,
            client_limits=Limits(
                header_s=args.header_timeout,
                body_idle_s=args.body_timeout,
                idle_s=args.idle_timeout,
                max_connections=args.max_connections,
            ),
        )
        problem = secret_problem(settings.secret)
        if problem and not bundled:  # the local quick start needs no secret
            log.warning("%s", problem)
        if not private and not args.no_event_log:
            _warn_if_unreachable(redis_url, spill_dir=args.spill_dir)
        if bundled:
            experiments = [_with_example_ports(experiments[0], args.example_ports)]
        plan = serving.Plan(
            experiments=experiments,
            settings=settings,
            sources=sources,
            catalog=catalog,
            host=args.host,
            port=args.port,
            shutdown_timeout_s=args.shutdown_timeout,
            companions=[lambda: _example_models(args.example_ports)] if bundled else [],
            grpc_port=args.grpc_port,
            grpc_server=args.grpc_server,
        )

        def show_banner(port: int) -> None:  # once the router listens: the port it got (--port 0 too)
            print(_quickstart_banner(args, port=port, config=path, redis_url=redis_url, private=private), flush=True)

        banner = show_banner if bundled else None
        if workers == 1:
            serving.run(plan, on_listening=banner)
            return 0
        from abrouter.router import supervisor

        def plan_for() -> serving.Plan:  # in each worker: a Kubernetes watch of its own
            if args.experiments is not None:
                return dataclasses.replace(plan, catalog=_catalog(args)[1])
            if args.experiment is not None:
                return dataclasses.replace(plan, sources={e.name: _kube_source(args)[1] for e in experiments})
            return plan

        return supervisor.run(
            plan_for,
            count=workers,
            host=args.host,
            port=args.port,
            companions=plan.companions,
            on_listening=banner,
            shutdown_timeout_s=args.shutdown_timeout,
        )


def _warn_if_unreachable(redis_url: str, *, spill_dir: Path) -> None:
    """Say loudly, before serving, that the event log's Redis does not answer (serve goes on: events spill)."""
    import redis  # the event log's own client library

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
        return
    except redis.RedisError as exc:
        problem = str(exc).rstrip(".")
    finally:
        client.close()
    print(
        f"abrouter: WARNING: Redis at {mask_url(redis_url)} cannot be used ({problem}).\n"
        f"  Serving anyway: every event waits in {spill_dir}/ until Redis answers, `abrouter analyze` sees\n"
        f"  none of them until then, and /abrouter/readyz says \"redis\": \"degraded\". Check --redis-url.",
        file=sys.stderr,
        flush=True,
    )


@contextlib.asynccontextmanager
async def _example_models(ports: tuple[int, int]) -> AsyncIterator[None]:
    """The quick start's two example models on 127.0.0.1; a taken port is named, with the flag that moves it."""
    from abrouter.router.examples.model_server import start_model_server

    runners = []
    try:
        for (arm, name), port in zip(EXAMPLE_MODELS, ports):
            try:
                runners.append(await start_model_server(name, "127.0.0.1", port))
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise OSError(
                    exc.errno,
                    f"cannot start the example {arm} model on 127.0.0.1:{port}: {reason} "
                    "(another abrouter serve?); move the example models with --example-ports PORT,PORT",
                ) from None
        yield
    finally:
        for runner in runners:
            await runner.cleanup()


def _with_example_ports(experiment: model.Experiment, ports: tuple[int, int]) -> model.Experiment:
    """The bundled experiment with its upstreams on `ports` (its file says 18181 and 18182)."""
    variants = tuple(
        dataclasses.replace(v, upstream=f"http://127.0.0.1:{port}") for v, port in zip(experiment.variants, ports)
    )
    return dataclasses.replace(experiment, variants=variants)


def _quickstart_banner(args: argparse.Namespace, *, port: int, config: Path, redis_url: str, private: bool) -> str:
    base = f"http://127.0.0.1:{port}"
    control, candidate = (f"http://127.0.0.1:{p}" for p in args.example_ports)
    if args.no_event_log:
        events = "events: none recorded (--no-event-log)"
    elif private:
        events = (
            f"events: a private Redis at {mask_url(redis_url)}, started for this process; "
            "it and everything in it vanish when serve stops"
        )
    else:
        events = f"events: Redis at {mask_url(redis_url)}"
    return (
        f"abrouter: serving the example experiment 'recsys-v2' on {base}\n"
        f"  models: control {control}, candidate {candidate} "
        f"(example servers started here; move them with --example-ports)\n"
        f"  {events}\n"
        f"  try:  curl -si -X POST -H 'X-User-Id: u42' -d '{{}}' {base}/predict\n"
        f"        curl -s -X POST -d '{{\"unit\": \"u42\", \"metric\": \"conversion\", \"value\": 1}}' "
        f"{base}/abrouter/outcomes\n"
        f"        curl -s {base}/abrouter/experiment ; curl -s {base}/abrouter/metrics\n"
        f"  analyze, from another terminal while serve runs:\n"
        f"        abrouter analyze --config {config} --redis-url {mask_url(redis_url)}\n"
        f"  stop with Ctrl-C"
    )


def example_model(args: argparse.Namespace) -> int:
    from aiohttp import web

    from abrouter.router.examples.model_server import build_model_app

    web.run_app(
        build_model_app(args.name, delay_ms=args.delay_ms),
        host=args.host,
        port=args.port,
        access_log=None,
        print=lambda *_: None,
        loop=serving.new_loop(),
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `abrouter` command")
