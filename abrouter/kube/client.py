"""`KubeClient`: every call abrouter makes to the Kubernetes API, through the official client.

The client is synchronous: the router's source runs its watch in a thread, the
analyzer's sink calls it through `asyncio.to_thread`. Each call names its verb and
resource, so a failure is translated here, once, into `abrouter.kube.errors` (chained
with ``from``): a 403 says which verb on which resource the caller's Role lacks, a 410
tells a watcher to relist, anything unreachable is `KubeUnavailable` (retry later).

Configuration: an explicit kubeconfig path; else, in a pod (``KUBERNETES_SERVICE_HOST``
set), the in-cluster service-account config; else the default kubeconfig
(``$KUBECONFIG`` or ``~/.kube/config``). Each client has its own `ApiClient`, never the
library's global default, so two clients (two tests, two API servers) do not mix.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import kubernetes.client
import kubernetes.config
import kubernetes.watch
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from abrouter.kube import errors

GROUP = "abrouter.io"
VERSION = "v1alpha1"
PLURAL = "experiments"
KIND = "Experiment"
MERGE_PATCH = "application/merge-patch+json"
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_WATCH: Any = kubernetes.watch
#: The API server's 403 message names the caller: ``User "system:serviceaccount:NS:NAME" cannot ...``.
_SERVICE_ACCOUNT = re.compile(r'User "system:serviceaccount:([^:"]+):([^:"]+)"')
_SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
T = TypeVar("T")
_CONFIG: Any = kubernetes.config


@dataclass(frozen=True)
class Ref:
    """NAMESPACE/NAME of an Experiment."""

    namespace: str
    name: str

    @classmethod
    def parse(cls, text: str) -> Ref:
        namespace, sep, name = text.partition("/")
        if not sep or not _LABEL.match(namespace) or not _SUBDOMAIN.match(name) or "/" in name:
            raise errors.KubeUserError(
                f"--experiment must be NAMESPACE/NAME (a namespace and an Experiment name, lowercase DNS names), "
                f"got {text!r}"
            )
        return cls(namespace, name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def load_config(kubeconfig: Path | None = None) -> kubernetes.client.ApiClient:
    """An `ApiClient` from `kubeconfig`, the in-cluster config, or the default kubeconfig."""
    configuration = kubernetes.client.Configuration()
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            _CONFIG.load_incluster_config(client_configuration=configuration)
        else:
            path = str(kubeconfig) if kubeconfig is not None else None
            _CONFIG.load_kube_config(config_file=path, client_configuration=configuration)
    except (kubernetes.config.ConfigException, OSError, ValueError) as exc:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "the Kubernetes config (in-cluster or ~/.kube/config)"
        raise errors.KubeUserError(f"cannot load {where}: {exc}") from exc
    # No retries inside urllib3: the callers back off themselves (the router's watch) or
    # report one line (the analyzer), and a retry loop per call would only log noise.
    configuration.retries = 0
    return kubernetes.client.ApiClient(configuration)


def home_namespace(kubeconfig: Path | None = None) -> str | None:
    """The namespace the credentials belong to: the pod's, or the kubeconfig context's; None if unknown."""
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            return Path(_SA_NAMESPACE).read_text().strip() or None
        _, active = _CONFIG.list_kube_config_contexts(config_file=str(kubeconfig) if kubeconfig else None)
        return str((active or {}).get("context", {}).get("namespace") or "") or None
    except (kubernetes.config.ConfigException, OSError, ValueError, TypeError):
        return None


class KubeClient:
    """The API calls of one component (`role`: "router" or "analyzer", named in 403 messages).

    `home` is the namespace its credentials belong to (`home_namespace`): a 403 in another
    namespace says the namespace may be wrong rather than that the Role lacks a verb.
    """

    def __init__(
        self, api: kubernetes.client.ApiClient, *, role: str, timeout_s: float = 10.0, home: str | None = None
    ) -> None:
        self.api: Any = api
        self.role = role
        self.timeout_s = timeout_s
        self.home = home
        # Typed as Any: the generated APIs' annotations (pydantic models, `object` results)
        # say less than the dicts the API returns, and older client versions have none.
        self.custom: Any = kubernetes.client.CustomObjectsApi(api)
        self.core: Any = kubernetes.client.CoreV1Api(api)
        self.apps: Any = kubernetes.client.AppsV1Api(api)
        self.coordination: Any = kubernetes.client.CoordinationV1Api(api)
        self._watch: Any = None

    @classmethod
    def from_config(cls, kubeconfig: Path | None = None, *, role: str) -> KubeClient:
        return cls(load_config(kubeconfig), role=role, home=home_namespace(kubeconfig))

    @property
    def server(self) -> str:
        return str(self.api.configuration.host)

    def close(self) -> None:
        self.stop_watch()
        self.api.close()

    # ------------------------------------------------------------------ experiments

    def get(self, ref: Ref) -> dict[str, Any]:
        return self._call(
            "get",
            PLURAL,
            ref,
            lambda: self.custom.get_namespaced_custom_object(
                *self._at(ref.namespace), ref.name, _request_timeout=self.timeout_s
            ),
        )

    def list_experiments(self, namespace: str, *, selector: str = "") -> tuple[list[dict[str, Any]], str]:
        """The namespace's Experiments (those with the labels `selector` selects, when given) and
        the list's resourceVersion (where a watch starts)."""
        doc = self._call(
            "list",
            PLURAL,
            Ref(namespace, ""),
            lambda: self.custom.list_namespaced_custom_object(
                *self._at(namespace), label_selector=selector, _request_timeout=self.timeout_s
            ),
        )
        return list(doc.get("items") or []), str(doc["metadata"]["resourceVersion"])

    def watch(
        self, namespace: str, resource_version: str, *, timeout_s: int = 60, selector: str = ""
    ) -> Iterator[tuple[str, Any]]:
        """(type, object) events after `resource_version`, for at most `timeout_s` seconds.

        Raises `KubeGone` when the version is too old (the API reports 410 inside the
        stream): the caller relists. `stop_watch` from another thread ends it early.
        """
        w = _WATCH.Watch()
        self._watch = w
        ref = Ref(namespace, "")
        stream = w.stream(
            self.custom.list_namespaced_custom_object,
            *self._at(namespace),
            resource_version=resource_version,
            label_selector=selector,
            timeout_seconds=timeout_s,
            allow_watch_bookmarks=False,
            _request_timeout=(self.timeout_s, timeout_s + self.timeout_s),
        )
        try:
            while True:
                event = self._call("watch", PLURAL, ref, lambda: next(stream, None))
                if event is None:
                    return
                yield str(event["type"]), event["raw_object"]
        finally:
            self._watch = None

    def stop_watch(self) -> None:
        w = self._watch
        if w is not None:
            w.stop()

    def patch_spec(
        self, ref: Ref, spec: dict[str, Any], *, resource_version: str, annotations: dict[str, str | None] | None = None
    ) -> dict[str, Any]:
        """Merge-patch `spec` (and `annotations`, in the same write), only if the object is still at
        `resource_version` (else `KubeConflict`). An annotation set to None is removed."""
        meta: dict[str, Any] = {"resourceVersion": resource_version}
        if annotations:
            meta["annotations"] = annotations
        body: dict[str, Any] = {"metadata": meta}
        if spec:
            body["spec"] = spec
        return self._call(
            "patch",
            PLURAL,
            ref,
            lambda: self.custom.patch_namespaced_custom_object(
                *self._at(ref.namespace), ref.name, body, _content_type=MERGE_PATCH, _request_timeout=self.timeout_s
            ),
        )

    def patch_status(self, ref: Ref, status: dict[str, Any], *, resource_version: str | None = None) -> dict[str, Any]:
        """Merge-patch `status` through the status subresource (spec cannot change this way)."""
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        return self._call(
            "patch",
            f"{PLURAL}/status",
            ref,
            lambda: self.custom.patch_namespaced_custom_object_status(
                *self._at(ref.namespace), ref.name, body, _content_type=MERGE_PATCH, _request_timeout=self.timeout_s
            ),
        )

    # ---------------------------------------------------------------- events, scale

    def create_event(
        self,
        obj: dict[str, Any],
        *,
        reason: str,
        message: str,
        warning: bool = False,
        component: str = "",
        name: str = "",
    ) -> bool:
        """A core/v1 Event about the Experiment `obj` (as `kubectl describe` shows them).

        With a `name`, creating it again is a no-op that returns False (the API's 409
        AlreadyExists): a step that is redone after a failure emits its Event once.
        """
        meta = obj["metadata"]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        naming = {"name": name} if name else {"generateName": f"{meta['name']}."}
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {**naming, "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": component or f"abrouter-{self.role}"},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        ref = Ref(meta["namespace"], "")
        try:
            self._call(
                "create",
                "events",
                ref,
                lambda: self.core.create_namespaced_event(meta["namespace"], body, _request_timeout=self.timeout_s),
            )
        except errors.KubeAlreadyExists:
            return False
        return True

    def list_events(self, namespace: str) -> list[dict[str, Any]]:
        def call() -> Any:
            return self.core.list_namespaced_event(namespace, _request_timeout=self.timeout_s)

        result = self._call("list", "events", Ref(namespace, ""), call)
        return [self.api.sanitize_for_serialization(e) for e in result.items]

    def get_scale(self, namespace: str, deployment: str) -> int:
        def call() -> Any:
            return self.apps.read_namespaced_deployment_scale(deployment, namespace, _request_timeout=self.timeout_s)

        scale = self._call("get", "deployments/scale", Ref(namespace, deployment), call)
        return int(scale.spec.replicas or 0)

    def scale(self, namespace: str, deployment: str, replicas: int) -> None:
        body = {"spec": {"replicas": replicas}}

        def call() -> Any:
            return self.apps.patch_namespaced_deployment_scale(
                deployment, namespace, body, _content_type=MERGE_PATCH, _request_timeout=self.timeout_s
            )

        self._call("patch", "deployments/scale", Ref(namespace, deployment), call)

    # ---------------------------------------------------------------------- leases

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A ``coordination.k8s.io/v1`` Lease as a dict, or None when there is none."""

        def call() -> Any:
            return self.coordination.read_namespaced_lease(name, namespace, _request_timeout=self.timeout_s)

        try:
            lease = self._call("get", "leases", Ref(namespace, name), call)
        except errors.KubeNotFound:
            return None
        return dict(self.api.sanitize_for_serialization(lease))

    def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create a Lease; `KubeAlreadyExists` when another created it first."""
        name = str(body["metadata"]["name"])

        def call() -> Any:
            return self.coordination.create_namespaced_lease(namespace, body, _request_timeout=self.timeout_s)

        return dict(self.api.sanitize_for_serialization(self._call("create", "leases", Ref(namespace, name), call)))

    def replace_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Replace a Lease, guarded by the ``metadata.resourceVersion`` in `body` (else `KubeConflict`)."""
        name = str(body["metadata"]["name"])

        def call() -> Any:
            return self.coordination.replace_namespaced_lease(name, namespace, body, _request_timeout=self.timeout_s)

        return dict(self.api.sanitize_for_serialization(self._call("update", "leases", Ref(namespace, name), call)))

    # --------------------------------------------------------------------- plumbing

    @staticmethod
    def _at(namespace: str) -> tuple[str, str, str, str]:
        return GROUP, VERSION, namespace, PLURAL

    def _call(self, verb: str, resource: str, ref: Ref, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except ApiException as exc:
            raise self._translate(exc, verb=verb, resource=resource, ref=ref) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise errors.KubeUnavailable(
                f"the Kubernetes API at {self.server} is unreachable: {_first_line(exc)}"
            ) from exc

    def _translate(self, exc: ApiException, *, verb: str, resource: str, ref: Ref) -> errors.KubeError:
        code = int(exc.status or 0)
        full = qualified(resource)
        what = f"{full} {ref}" if ref.name else f"{full} in namespace {ref.namespace}"
        detail = _api_message(exc)
        if code == 401:
            return errors.KubeUnauthorized(
                f"unauthorized: the Kubernetes API at {self.server} did not accept the credentials ({detail})"
            )
        if code == 403:
            return errors.KubeForbidden(self._forbidden(verb, resource, ref.namespace, detail))
        if code == 404:
            return errors.KubeNotFound(f"not found: {what} ({detail}; {_missing(exc, resource, ref)})")
        if code == 409 and _api_reason(exc) == "AlreadyExists":
            return errors.KubeAlreadyExists(f"already exists: {what} ({detail})")
        if code == 409:
            return errors.KubeConflict(f"conflict: {what} changed since it was read ({detail})")
        if code == 410:
            return errors.KubeGone(f"gone: the watch of {what} must relist ({detail})")
        if code == 0 or code >= 500 or code == 429:
            return errors.KubeUnavailable(f"the Kubernetes API at {self.server} failed: {code} {detail}", status=code)
        return errors.KubeError(f"cannot {verb} {what}: {code} {detail}", status=code)

    def _forbidden(self, verb: str, resource: str, namespace: str, detail: str) -> str:
        """A 403, as a wrong namespace when the credentials belong to another one, else as the missing verb."""
        head = f"forbidden: cannot {verb} {qualified(resource)} in namespace {namespace}"
        account = _SERVICE_ACCOUNT.search(detail)
        home = account.group(1) if account else self.home
        if home and home != namespace:
            whose = f"ServiceAccount {account.group(1)}/{account.group(2)}" if account else "the kubeconfig's context"
            return (
                f"{head}, but the {self.role}'s credentials ({whose}) belong to namespace {home}: "
                f"is {namespace} the right namespace? If it is, the {self.role} needs a Role in {namespace} "
                f"with the verb {verb} on {resource}"
            )
        return f"{head}; the {self.role}'s Role needs the verb {verb} on {resource}"


def _missing(exc: ApiException, resource: str, ref: Ref) -> str:
    """Why a 404: the named object is not there, or the API does not know the resource at all."""
    if not (_status(exc).get("details") or {}).get("name"):
        return "is the Experiment CRD installed?" if resource.startswith(PLURAL) else "is the resource served?"
    if resource.startswith(PLURAL):
        return f"no Experiment {ref.name} in namespace {ref.namespace}; `kubectl get experiments -A` lists them all"
    return f"no such object in namespace {ref.namespace}"


def qualified(resource: str) -> str:
    """``experiments/status`` -> ``experiments.abrouter.io/status``, as kubectl names it."""
    base, sep, sub = resource.partition("/")
    group = {PLURAL: GROUP, "deployments": "apps", "leases": "coordination.k8s.io"}.get(base)
    return f"{base}.{group}{sep}{sub}" if group else resource


def _status(exc: ApiException) -> dict[str, Any]:
    """The ``kind: Status`` body of an error, or {}."""
    try:
        body = json.loads(exc.body) if exc.body else None
    except (TypeError, ValueError):
        body = None
    return body if isinstance(body, dict) else {}


def _api_message(exc: ApiException) -> str:
    """The Status object's message when the body is one, else the HTTP reason."""
    message = _status(exc).get("message")
    return str(message) if message else str(exc.reason or "no detail")


def _api_reason(exc: ApiException) -> str:
    return str(_status(exc).get("reason") or "")


def _first_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]
