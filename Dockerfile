# abrouter: the router (`serve`), the analyzer (`analyze`) and the example model server.
# Build: docker build -t abrouter:0.1.0 .      Deploy: docs/kubernetes.md
#
# Two stages: the builder turns the checkout into a wheel (build tools and the source stay
# behind); the final stage installs only that wheel and its runtime dependencies.
# The base is pinned to an exact tag, so a rebuild gets the same Python and Debian.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A C compiler: setup.py compiles the data path with mypyc into the wheel (without one it is pure Python).
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY abrouter/ abrouter/
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ABROUTER_SPILL_DIR=/var/lib/abrouter/spill

# Runtime dependencies only, no test extras. pip compiles the bytecode here, since the
# root filesystem is read-only at run time.
COPY --from=builder /wheels/ /wheels/
RUN pip install /wheels/*.whl && rm -rf /wheels

# A numeric non-root user, so that Kubernetes' runAsNonRoot can verify it. The spill
# dir must be writable: events wait there while Redis is unreachable (an emptyDir in k8s).
RUN groupadd --system --gid 10001 abrouter \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/abrouter --shell /usr/sbin/nologin abrouter \
 && mkdir -p /var/lib/abrouter/spill \
 && chown -R 10001:10001 /var/lib/abrouter
USER 10001:10001
WORKDIR /var/lib/abrouter

EXPOSE 8080
ENTRYPOINT ["abrouter"]
CMD ["serve"]
