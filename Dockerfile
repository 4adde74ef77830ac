# abrouter: the router (`serve`), the analyzer (`analyze`) and the example model server.
# Build: docker build -t abrouter:0.1.0 .      Deploy: docs/kubernetes.md
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ABROUTER_SPILL_DIR=/var/lib/abrouter/spill

# Install the project (runtime dependencies only, no test extras). pip compiles the
# bytecode here, since the root filesystem is read-only at run time.
COPY pyproject.toml README.md /src/
COPY abrouter/ /src/abrouter/
RUN pip install /src && rm -rf /src

# A numeric non-root user, so that Kubernetes' runAsNonRoot can verify it. The spill
# dir must be writable: events wait there while Redis is unreachable (an emptyDir in k8s).
RUN groupadd --system --gid 10001 abrouter \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/abrouter --shell /usr/sbin/nologin abrouter \
 && mkdir -p /var/lib/abrouter/spill /etc/abrouter \
 && chown -R 10001:10001 /var/lib/abrouter
USER 10001:10001
WORKDIR /var/lib/abrouter

EXPOSE 8080
ENTRYPOINT ["abrouter"]
CMD ["serve", "--config", "/etc/abrouter/experiment.yaml"]
