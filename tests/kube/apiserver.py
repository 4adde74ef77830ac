"""A Kubernetes API test server of ours: the real `kubernetes` client talks HTTP to it.

kmock 0.8 has no resourceVersion, no 409 and no status subresource, so this aiohttp app
implements the semantics our code relies on, for the resources it uses:

- ``abrouter.io/v1alpha1`` experiments (namespaced, with a status subresource): create,
  get, list, watch, update (PUT), merge-patch, delete; ``/status`` get, update, patch;
- ``v1`` events: create, list; ``apps/v1`` deployments/scale: get, patch;
- ``coordination.k8s.io/v1`` leases (leader election): create, get, list, update (PUT,
  which needs the ``resourceVersion`` it read: 409 when stale, 422 without), delete;
- discovery and server-side Tables (`tests.kube.apitables`), so the real ``kubectl get``
  works against it and prints the CRD's printer columns.

Semantics: an Experiment is pruned and validated against the CRD's schema as a real
API server does it (`tests.kube.apischema`: unknown fields dropped, a 422 ``Invalid``
naming each bad field), on create, on every write of it or its ``/status``, and in
`put`; one global resourceVersion counter, bumped by every write that changes an
object (a no-op patch changes nothing, as on a real API server); ``metadata.generation``
bumped only when ``spec`` changes; a write whose body carries a stale
``metadata.resourceVersion`` is 409 Conflict; the main resource ignores ``status`` and
``/status`` changes only ``status``; a custom resource accepts only
``application/merge-patch+json`` (415 for strategic merge, which CRs do not support);
a list carries ``metadata.resourceVersion`` and follows a ``labelSelector`` (equality- and
set-based; 400 when it does not parse); ``?watch=true&resourceVersion=N`` streams
newline-delimited JSON events after N (with a ``labelSelector``, an object that leaves the
selection is DELETED and one that enters it ADDED, as the watch cache sends them), and a
too-old N is an ERROR event holding a 410 Status inside a 200 stream; 401 without or with
a wrong bearer token; 403 for a verb the configured role lacks; 404 for unknown objects.
Every error body is a ``kind: Status``.

It runs on its own event loop in a thread, so a test may call the synchronous client
directly. Hooks: `down`/`up` (the port refuses connections), `end_watches`, `fail_next_watch_with_410`,
`compact`, `allow` (a Role's verbs), `before_next_write` (a concurrent writer).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from tests.kube import apischema, apitables
from tests.kube.apistore import (
    GROUP,
    PLURAL,
    VERSION,
    ApiError,
    Store,
    Watcher,
    details_of,
    merge_patch,
    name_of,
    qualified_kind,
    selects,
    status_body,
    user_metadata,
)

TOKEN = "abrouter-test-token"
LEASE_GROUP = "coordination.k8s.io"
#: The namespace of the tests' objects, and of the service account the server says is calling.
NAMESPACE = "abrouter-test"


class KubeApiServer(Store):
    def __init__(
        self, *, token: str = TOKEN, user: str = f"system:serviceaccount:{NAMESPACE}:abrouter", tls: Path | None = None
    ) -> None:
        super().__init__()
        self.token = token
        self.user = user
        #: A directory for a self-signed certificate: serve HTTPS (kubectl sends no token over HTTP).
        self.tls = tls
        self._ssl: ssl.SSLContext | None = _self_signed(tls) if tls is not None else None
        #: resource -> allowed verbs; a resource not named here allows every verb.
        self.roles: dict[str, set[str]] = {}
        #: The namespaces the roles are bound in (a namespaced Role); None: every namespace.
        self.role_namespaces: set[str] | None = None
        self.requests: list[tuple[str, str]] = []
        #: The paths of the fields pruned from Experiments (unknown to the CRD's schema), in order.
        self.pruned: list[str] = []
        self._gone_next_watch = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kube-apiserver", daemon=True)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle and hooks

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> KubeApiServer:
        self._thread.start()
        self._call(self._start())
        return self

    def close(self) -> None:
        self._call(self._stop(cleanup=True))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def down(self) -> None:
        """Stop listening and end open watches: clients see connection refused."""
        self._call(self._stop(cleanup=False))

    def up(self) -> None:
        self._call(self._listen())

    def end_watches(self) -> None:
        """End every open watch stream cleanly, as the API does at its timeout: clients watch again."""

        def end() -> None:
            for w in self._watchers:
                w.queue.put_nowait(None)

        self._sync(end)

    def fail_next_watch_with_410(self) -> None:
        self._gone_next_watch = True

    def compact(self) -> None:
        """Forget the history: a watch from any older resourceVersion is now 410 Gone."""
        self._sync(self._compact)

    def allow(self, resource: str, *verbs: str) -> None:
        """Emulate RBAC: `resource` (e.g. ``experiments/status``) allows only `verbs`."""
        self.roles[resource] = set(verbs)

    def before_next_write(self, action: Callable[[], None]) -> None:
        """Run `action` (e.g. another writer's `put`) just before the next write is checked."""
        self._before_write = action

    def kubeconfig(self, path: Path, *, token: str | None = None, namespace: str = "default") -> Path:
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": self.url, **self._ca()}}],
            "users": [{"name": "test", "user": {"token": self.token if token is None else token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": namespace}}],
            "current-context": "test",
        }
        path.write_text(yaml.safe_dump(doc))
        return path

    def _ca(self) -> dict[str, str]:
        if self.tls is None:
            return {}
        return {"certificate-authority-data": base64.b64encode((self.tls / "cert.pem").read_bytes()).decode()}

    # -------------------------------------------- direct access for tests (on the server loop)

    def put(self, resource: str, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object as an administrator would (no checks, no RBAC)."""

        def do() -> dict[str, Any]:
            key = (resource, namespace, obj["metadata"]["name"])
            old = self.objects.get(key)
            new = admit(key, copy.deepcopy(obj), self.pruned) if resource == PLURAL else copy.deepcopy(obj)
            return self._commit(key, old, new, spec_changed=old is None or old.get("spec") != new.get("spec"))

        return self._sync(do)

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self._sync(lambda: copy.deepcopy(self.objects.get((resource, namespace, name))))

    def list(self, resource: str, namespace: str) -> list[dict[str, Any]]:
        return self._sync(
            lambda: [copy.deepcopy(o) for (r, ns, _), o in self.objects.items() if r == resource and ns == namespace]
        )

    def _sync(self, fn: Callable[[], Any]) -> Any:
        if threading.current_thread() is self._thread:  # a hook running inside a request
            return fn()

        async def run() -> Any:
            return fn()

        return self._call(run())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        base = f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{PLURAL}"
        app.router.add_route("*", base, self._experiments)
        app.router.add_route("*", base + "/{name}", self._experiment)
        app.router.add_route("*", base + "/{name}/status", self._experiment_status)
        app.router.add_route("*", "/api/v1/namespaces/{ns}/events", self._events)
        app.router.add_route("*", "/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale", self._scale)
        leases = f"/apis/{LEASE_GROUP}/v1/namespaces/{{ns}}/leases"
        app.router.add_route("*", leases, self._leases)
        app.router.add_route("*", leases + "/{name}", self._lease)
        for path, doc in (("/api", apitables.api_versions), ("/api/v1", apitables.core_resources)):
            app.router.add_get(path, _static(doc()))
        app.router.add_get("/apis", _static(apitables.groups()))
        app.router.add_get("/apis/{group}/{version}", self._discovery)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True, ssl_context=self._ssl)
        await self._site.start()
        self.port = self._runner.addresses[-1][1]

    async def _stop(self, *, cleanup: bool) -> None:
        for w in self._watchers:
            w.queue.put_nowait(None)
        if self._site is not None:
            await self._site.stop()
            self._site = None
        server = self._runner.server if self._runner is not None else None
        for conn in list(server.connections if server is not None else ()):  # keep-alive ones too
            conn.force_close()
            if conn.transport is not None:
                conn.transport.close()
        if cleanup and self._runner is not None:
            await self._runner.cleanup()

    # ----------------------------------------------------------------------- middleware

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        try:
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            resp: web.StreamResponse = await handler(request)
            return resp
        except ApiError as exc:
            return web.json_response(exc.body, status=exc.body["code"])

    def _authorize(self, request: web.Request, resource: str, name: str = "") -> str:
        verb = _verb(request, bool(name))
        allowed = self.roles.get(resource)
        elsewhere = self.role_namespaces is not None and request.match_info["ns"] not in self.role_namespaces
        if elsewhere or (allowed is not None and verb not in allowed):
            base = resource.partition("/")[0]
            group = {"experiments": GROUP, "deployments": "apps", "leases": LEASE_GROUP}.get(base, "")
            what = f'{base}.{group} "{name}"' if name and group else (f'{base} "{name}"' if name else base)
            raise ApiError(
                403,
                "Forbidden",
                f'{what} is forbidden: User "{self.user}" cannot {verb} resource "{resource}" '
                f'in API group "{group}" in the namespace "{request.match_info["ns"]}"',
                {"name": name, "group": group, "kind": base},
            )
        return verb

    # ------------------------------------------------------------------------- handlers

    async def _experiments(self, request: web.Request) -> web.StreamResponse:
        ns = request.match_info["ns"]
        verb = self._authorize(request, PLURAL)
        if verb == "watch":
            return await self._watch(request, PLURAL, ns)
        if verb == "list":
            selector = request.query.get("labelSelector", "")
            listed = self._list_body(PLURAL, ns, "ExperimentList", f"{GROUP}/{VERSION}", selector=selector)
            if apitables.wants_table(request.headers.get("Accept", "")):  # kubectl get
                rv = listed["metadata"]["resourceVersion"]
                return web.json_response(apitables.table(listed["items"], resource_version=rv))
            return web.json_response(listed)
        if verb == "create":
            body = await _json(request)
            key = (PLURAL, ns, name_of(body))
            if key in self.objects:
                raise ApiError(
                    409, "AlreadyExists", f'{qualified_kind(PLURAL)} "{key[2]}" already exists', details_of(key)
                )
            body.pop("status", None)  # with a status subresource, create ignores status
            return web.json_response(
                self._commit(key, None, admit(key, body, self.pruned), spec_changed=True), status=201
            )
        raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported on {request.path}")

    async def _experiment(self, request: web.Request) -> web.StreamResponse:
        key = (PLURAL, request.match_info["ns"], request.match_info["name"])
        verb = self._authorize(request, PLURAL, key[2])
        current = self._existing(key)
        if verb == "get" and apitables.wants_table(request.headers.get("Accept", "")):
            return web.json_response(
                apitables.table([current], resource_version=current["metadata"]["resourceVersion"])
            )
        if verb == "get":
            return web.json_response(current)
        if verb == "delete":
            del self.objects[key]
            self.rv += 1
            gone = merge_patch(current, {"metadata": {"resourceVersion": str(self.rv)}})
            self._publish("DELETED", key, gone)
            return web.json_response(gone)
        body = await self._write_body(request, custom=True)
        self._precondition(key, body, current, required=verb == "update")
        current = self.objects[key]
        new = merge_patch(current, body) if verb == "patch" else copy.deepcopy(body)
        new["status"] = copy.deepcopy(current.get("status"))  # the main resource ignores status
        if new["status"] is None:
            del new["status"]
        kept = {k: v for k, v in current["metadata"].items() if k not in ("labels", "annotations")}
        new["metadata"] = {**kept, **user_metadata(new)}
        new = admit(key, new, self.pruned)
        return web.json_response(self._commit(key, current, new, spec_changed=new.get("spec") != current.get("spec")))

    async def _experiment_status(self, request: web.Request) -> web.StreamResponse:
        key = (PLURAL, request.match_info["ns"], request.match_info["name"])
        verb = self._authorize(request, f"{PLURAL}/status", key[2])
        current = self._existing(key)
        if verb == "get":
            return web.json_response(current)
        body = await self._write_body(request, custom=True)
        self._precondition(key, body, current, required=verb == "update")
        current = self.objects[key]
        status = merge_patch(current.get("status"), body.get("status")) if verb == "patch" else body.get("status")
        new = copy.deepcopy(current)  # /status changes status only: spec and metadata stay
        if status is None:
            new.pop("status", None)
        else:
            new["status"] = status
        return web.json_response(self._commit(key, current, admit(key, new, self.pruned), spec_changed=False))

    async def _events(self, request: web.Request) -> web.StreamResponse:
        ns = request.match_info["ns"]
        verb = self._authorize(request, "events")
        if verb == "list":
            return web.json_response(self._list_body("events", ns, "EventList", "v1"))
        if verb != "create":
            raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported on {request.path}")
        body = await _json(request)
        meta = body.setdefault("metadata", {})
        if not meta.get("name"):
            meta["name"] = (meta.get("generateName") or "event.") + uuid.uuid4().hex[:10]
        key = ("events", ns, meta["name"])
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'events "{key[2]}" already exists', details_of(key))
        return web.json_response(self._commit(key, None, body, spec_changed=True), status=201)

    async def _scale(self, request: web.Request) -> web.StreamResponse:
        key = ("deployments", request.match_info["ns"], request.match_info["name"])
        verb = self._authorize(request, "deployments/scale", key[2])
        current = self._existing(key)
        if verb == "patch":
            body = await self._write_body(request, custom=False)
            self._precondition(key, body, current)
            current = self.objects[key]
            replicas = ((body.get("spec") or {}).get("replicas"), current["spec"].get("replicas"))
            new = merge_patch(current, {"spec": {"replicas": replicas[0] if replicas[0] is not None else replicas[1]}})
            current = self._commit(key, current, new, spec_changed=new["spec"] != current["spec"])
        elif verb != "get":
            raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported on {request.path}")
        meta = current["metadata"]
        return web.json_response(
            {
                "kind": "Scale",
                "apiVersion": "autoscaling/v1",
                "metadata": {k: meta[k] for k in ("name", "namespace", "resourceVersion", "uid", "creationTimestamp")},
                "spec": {"replicas": current["spec"].get("replicas", 1)},
                "status": {"replicas": current.get("status", {}).get("replicas", 0)},
            }
        )

    async def _leases(self, request: web.Request) -> web.StreamResponse:
        ns = request.match_info["ns"]
        verb = self._authorize(request, "leases")
        if verb == "list":
            return web.json_response(self._list_body("leases", ns, "LeaseList", f"{LEASE_GROUP}/v1"))
        if verb != "create":
            raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported on {request.path}")
        body = _lease(await _json(request))
        key = ("leases", ns, name_of(body))
        if key in self.objects:
            raise ApiError(
                409, "AlreadyExists", f'{qualified_kind("leases")} "{key[2]}" already exists', details_of(key)
            )
        return web.json_response(self._commit(key, None, body, spec_changed=True), status=201)

    async def _lease(self, request: web.Request) -> web.StreamResponse:
        key = ("leases", request.match_info["ns"], request.match_info["name"])
        verb = self._authorize(request, "leases", key[2])
        current = self._existing(key)
        if verb == "get":
            return web.json_response(current)
        if verb == "delete":
            del self.objects[key]
            self.rv += 1
            return web.json_response(merge_patch(current, {"metadata": {"resourceVersion": str(self.rv)}}))
        if verb != "update":
            raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported on {request.path}")
        body = _lease(await _json(request))
        self._precondition(key, body, current, required=True)
        current = self.objects[key]
        new = {**copy.deepcopy(body), "metadata": {**user_metadata(body)}}
        return web.json_response(self._commit(key, current, new, spec_changed=new.get("spec") != current.get("spec")))

    async def _discovery(self, request: web.Request) -> web.StreamResponse:
        found = apitables.group_resources(request.match_info["group"], request.match_info["version"])
        if found is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return web.json_response(found)

    async def _write_body(self, request: web.Request, *, custom: bool) -> Any:
        ctype = request.content_type
        if request.method == "PATCH":
            allowed = ["application/merge-patch+json"] + ([] if custom else ["application/strategic-merge-patch+json"])
            if ctype not in allowed:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - "
                    f"accepted media types include: {', '.join(allowed)}",
                )
        return await _json(request)

    async def _watch(self, request: web.Request, resource: str, ns: str) -> web.StreamResponse:
        watcher = Watcher(resource, ns, selector=request.query.get("labelSelector", ""))
        selects(watcher.selector, {})  # a selector that does not parse is a 400 before the stream starts
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        since_text = request.query.get("resourceVersion", "")
        since = int(since_text) if since_text.isdigit() else 0
        if self._gone_next_watch or (since and since < self.oldest):
            self._gone_next_watch = False
            message = f"too old resource version: {since} ({self.oldest})"
            await _send(response, {"type": "ERROR", "object": status_body(410, "Expired", message)})
            return response
        if since:
            seen = (
                (watcher.sees(t, before, o), o)
                for rv, t, k, before, o in self.history
                if rv > since and k[:2] == (resource, ns)
            )
            backlog = [{"type": t, "object": o} for t, o in seen if t]
        else:  # no resourceVersion: the current state as ADDED events first
            backlog = [
                {"type": "ADDED", "object": o}
                for (r, n, _), o in self.objects.items()
                if (r, n) == (resource, ns) and watcher.sees("ADDED", None, o)
            ]
        for event in backlog:
            watcher.queue.put_nowait(event)
        self._watchers.append(watcher)
        deadline = time.monotonic() + float(request.query.get("timeoutSeconds", "1800"))
        try:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), left)
                except TimeoutError:
                    break
                if event is None:  # the server goes down
                    break
                await _send(response, event)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers.remove(watcher)
        return response


def _lease(body: dict[str, Any]) -> dict[str, Any]:
    """A Lease body as the API server validates it: the kind, and the spec's types (a 422 naming the field)."""
    if body.get("kind", "Lease") != "Lease" or body.get("apiVersion", f"{LEASE_GROUP}/v1") != f"{LEASE_GROUP}/v1":
        raise ApiError(
            400, "BadRequest", f"expected a {LEASE_GROUP}/v1 Lease, got {body.get('apiVersion')} {body.get('kind')}"
        )
    spec = body.get("spec") or {}
    types = {"holderIdentity": str, "leaseDurationSeconds": int, "leaseTransitions": int}
    types |= {"acquireTime": str, "renewTime": str}
    for name, kind in types.items():
        value = spec.get(name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ApiError(422, "Invalid", f"spec.{name}: Invalid value: {value!r}: must be of type {kind.__name__}")
    if (spec.get("leaseDurationSeconds") or 1) <= 0:
        raise ApiError(422, "Invalid", "spec.leaseDurationSeconds: Invalid value: must be greater than 0")
    return {"apiVersion": f"{LEASE_GROUP}/v1", "kind": "Lease", "metadata": body.get("metadata") or {}, "spec": spec}


def _static(doc: dict[str, Any]) -> Callable[[web.Request], Any]:
    async def handler(_: web.Request) -> web.Response:
        return web.json_response(doc)

    return handler


def _self_signed(directory: Path) -> ssl.SSLContext:
    """A certificate for 127.0.0.1 made by the openssl CLI, and a server context with it."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    command = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=127.0.0.1"
    subprocess.run(
        [*command.split(), "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def admit(key: tuple[str, str, str], obj: dict[str, Any], dropped: list[str]) -> dict[str, Any]:
    """An Experiment as the API server stores it: pruned (paths into `dropped`), or a 422 naming every bad field."""
    pruned = apischema.prune(obj, apischema.schema(), dropped)
    causes = apischema.causes(pruned)
    if causes:
        kind = "Experiment"
        raise ApiError(
            422,
            "Invalid",
            apischema.message(f"{kind}.{GROUP}", key[2], causes),
            {"name": key[2], "group": GROUP, "kind": kind, "causes": causes},
        )
    return dict(pruned)


async def _send(response: web.StreamResponse, event: dict[str, Any]) -> None:
    await response.write(json.dumps(event).encode() + b"\n")


async def _json(request: web.Request) -> Any:
    try:
        body = await request.json()
    except ValueError as exc:
        raise ApiError(400, "BadRequest", f"the request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "BadRequest", "the request body must be a JSON object")
    return body


def _verb(request: web.Request, item: bool) -> str:
    if request.method == "GET":
        return "get" if item else ("watch" if request.query.get("watch") in ("true", "1") else "list")
    verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
    return verbs.get(request.method, request.method.lower())
