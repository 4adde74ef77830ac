"""The Kubernetes access's exceptions, translated from the API's status codes.

::

    AbrouterError (abrouter.errors)
    ├── UserError
    │    └── KubeUserError        a bad reference: NAMESPACE/NAME that does not parse
    └── KubeError                 the API answered with an error, or could not be reached
         ├── KubeUnavailable      unreachable, timed out, or 5xx: retry with backoff
         ├── KubeUnauthorized     401: the credentials are not accepted
         ├── KubeForbidden        403: the role lacks a verb on a resource (the message names both)
         ├── KubeNotFound         404: the object (or its CRD) does not exist
         ├── KubeConflict         409: a write guarded by a stale resourceVersion
         │    └── KubeAlreadyExists   409: a create of a name that exists (an Event created before)
         └── KubeGone             410: a watch's resourceVersion is too old; relist
"""

from __future__ import annotations

from abrouter.errors import AbrouterError, UserError


class KubeUserError(UserError):
    """A Kubernetes reference given by the user that cannot be used."""


class KubeError(AbrouterError):
    """The Kubernetes API answered with an error or could not be reached; `status` is the HTTP code."""

    status: int | None = None

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class KubeUnavailable(KubeError):
    """Unreachable, timed out or a server error: try again later."""


class KubeUnauthorized(KubeError):
    status = 401


class KubeForbidden(KubeError):
    status = 403


class KubeNotFound(KubeError):
    status = 404


class KubeConflict(KubeError):
    status = 409


class KubeAlreadyExists(KubeConflict):
    """A create of a name that is taken: for a deterministic name, the object was created before."""


class KubeGone(KubeError):
    status = 410
