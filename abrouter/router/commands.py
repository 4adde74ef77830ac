"""`abrouter serve` and `abrouter example-model`: argument parsing and process setup only."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from abrouter.contract import experiment as model
from abrouter.errors import UserError
from abrouter.redact import mask_url
from abrouter.router import examples, serving
from abrouter.router.connections import Limits
from abrouter.router.redis_server import RedisServer
from abrouter.router.settings import ServeSettings, api_token_from_env, secret_from_env, secret_problem
from abrouter.router.sources.base import SpecSource
from abrouter.router.sources.file import FileSource

if TYPE_CHECKING:
    from abrouter.router.sources.kube import KubeSource

log = logging.getLogger("abrouter")

EXAMPLE_PORTS = (18181, 18182)

SERVE_EPILOG = """\
examples:
  abrouter serve                                  # the example experiment, example models, private Redis
  abrouter serve --config exp.yaml --redis-url redis://redis:6379/0 --port 8080
  abrouter serve --experiment default/recsys --redis-url redis://redis:6379/0   # in a pod

With no --config, abrouter serves its bundled example experiment in front of two
example model servers it starts on 127.0.0.1:18181 and :18182. With no --redis-url (and
no REDIS_URL), it starts a private redis-server for the event log and stops it on exit.
The config file is re-read every --reload-interval seconds: new weights (with a raised
`epoch`) take effect without a restart. With --experiment, the spec comes from the
Experiment resource and every change of it applies within a second or two; its epoch is
the object's metadata.generation. Reserved endpoints live under /abrouter/.
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
    where.add_argument("--config", type=Path, help="experiment YAML (default: the bundled example)")
    where.add_argument(
        "--experiment",
        metavar="NAMESPACE/NAME",
        help="follow an Experiment resource through the Kubernetes API (list, then watch)",
    )
    p.add_argument(
        "--kubeconfig",
        type=Path,
        metavar="PATH",
        help="with --experiment: the kubeconfig to use (default: in a pod the in-cluster config, "
        "else $KUBECONFIG or ~/.kube/config)",
    )
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default: %(default)s)")
    p.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        help="Redis for the event log (default: $REDIS_URL, else a private embedded redis-server)",
    )
    p.add_argument(
        "--spill-dir",
        type=Path,
        default=Path(os.environ.get("ABROUTER_SPILL_DIR", "abrouter-spill")),
        help="where events wait while Redis is unreachable (default: %(default)s)",
    )
    p.add_argument(
        "--flush-interval",
        type=float,
        default=0.25,
        metavar="SECONDS",
        help="seconds between event-log flushes (default: %(default)s)",
    )
    p.add_argument(
        "--reload-interval",
        type=float,
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
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, how long in-flight requests may take to finish (default: %(default)s)",
    )
    limits = Limits()
    p.add_argument(
        "--header-timeout",
        type=float,
        default=os.environ.get("ABROUTER_HEADER_TIMEOUT", limits.header_s),
        metavar="SECONDS",
        help="close a connection whose request headers are not complete this long after their first byte "
        "(or after the connection opened, for its first request) (default: $ABROUTER_HEADER_TIMEOUT, "
        "else %(default)s)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=os.environ.get("ABROUTER_BODY_TIMEOUT", limits.body_idle_s),
        metavar="SECONDS",
        help="close a connection whose request body stops arriving for this long; a body that keeps "
        "coming is never cut (default: $ABROUTER_BODY_TIMEOUT, else %(default)s)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=os.environ.get("ABROUTER_IDLE_TIMEOUT", limits.idle_s),
        metavar="SECONDS",
        help="close a kept-alive connection idle this long between two requests; keep it above the "
        "keep-alive of a proxy in front (ingress-nginx, AWS: 60 s) (default: $ABROUTER_IDLE_TIMEOUT, "
        "else %(default)s)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=os.environ.get("ABROUTER_MAX_CONNECTIONS", limits.max_connections),
        metavar="N",
        help="answer 503 and close new connections while N are open (default: $ABROUTER_MAX_CONNECTIONS, "
        "else %(default)s)",
    )
    p.set_defaults(func=serve)

    m = subparsers.add_parser(
        "example-model",
        help="run an example model server (for demos and tests)",
        description="A stand-in recommendation model: POST /predict returns JSON items.",
    )
    m.add_argument("--name", default="control", help="model name in responses (default: %(default)s)")
    m.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    m.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    m.add_argument("--delay-ms", type=float, default=0.0, help="added latency per request (default: 0)")
    m.set_defaults(func=example_model)


def _check_args(args: argparse.Namespace) -> None:
    for name in (
        "flush_interval",
        "reload_interval",
        "shutdown_timeout",
        "header_timeout",
        "body_timeout",
        "idle_timeout",
    ):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.max_connections < 1:
        raise UserError(f"--max-connections must be >= 1, got {args.max_connections}")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0..65535, got {args.port}")
    if args.kubeconfig is not None and args.experiment is None:
        raise UserError("--kubeconfig needs --experiment NAMESPACE/NAME")


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


def serve(args: argparse.Namespace) -> int:
    _check_args(args)
    bundled = args.config is None and args.experiment is None
    path = args.config or examples.EXPERIMENT_PATH
    source: SpecSource
    if args.experiment is not None:
        experiment, source = _kube_source(args)
    else:
        experiment = model.load(path)
        source = FileSource(path, interval_s=args.reload_interval)
    with ExitStack() as stack:
        redis_url = args.redis_url or ""
        if not redis_url and not args.no_event_log:
            server = stack.enter_context(RedisServer())
            redis_url = server.url
            log.info("started a private redis-server for the event log: %s", redis_url)
        settings = ServeSettings(
            redis_url=redis_url,
            spill_dir=args.spill_dir,
            flush_interval_s=args.flush_interval,
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
        plan = serving.Plan(
            experiment=experiment,
            settings=settings,
            source=source,
            host=args.host,
            port=args.port,
            shutdown_timeout_s=args.shutdown_timeout,
            companions=[_example_models] if bundled else [],
        )
        banner = (
            (lambda port: print(_quickstart_banner(port, config=path, redis_url=redis_url), flush=True))
            if bundled
            else None
        )
        serving.run(plan, on_listening=banner)
    return 0


@contextlib.asynccontextmanager
async def _example_models() -> AsyncIterator[None]:
    from abrouter.router.examples.model_server import start_model_server

    runners = []
    try:
        for name, port in zip(("model-a", "model-b"), EXAMPLE_PORTS):
            runners.append(await start_model_server(name, "127.0.0.1", port))
        yield
    finally:
        for runner in runners:
            await runner.cleanup()


def _quickstart_banner(port: int, *, config: Path, redis_url: str) -> str:
    base = f"http://127.0.0.1:{port}"
    return (
        f"abrouter: serving the example experiment 'recsys-v2' on {base}\n"
        f"  try:  curl -si -X POST -H 'X-User-Id: u42' -d '{{}}' {base}/predict\n"
        f"        curl -s -X POST -d '{{\"unit\": \"u42\", \"metric\": \"conversion\", \"value\": 1}}' "
        f"{base}/abrouter/outcomes\n"
        f"        curl -s {base}/abrouter/experiment ; curl -s {base}/abrouter/metrics\n"
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
