"""Access to the Kubernetes API, shared by the router's source and the analyzer's sink.

The only package that imports `kubernetes`. It maps the API's errors to `abrouter.kube.errors`.
"""
