# cacheproxy in a container: one replica, installed from the lock (uv.lock).
# Several replicas behind a load balancer share one Redis (docs/redis-tier.md):
#
#   docker build -t cacheproxy .
#   docker run --env-file config/cacheproxy.env.example -e CACHEPROXY_HOST=0.0.0.0 \
#       -p 6821:6821 cacheproxy
#
# With TLS, mount the certificate and key and set CACHEPROXY_TLS_CERT and
# CACHEPROXY_TLS_KEY: the health check then probes over TLS.

# -- build: exactly the locked versions, no test or bench extras --------------
FROM python:3.11-slim AS build

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_PROJECT_ENVIRONMENT=/opt/cacheproxy

WORKDIR /src
# uv, pinned by hash, installs the lock; it stays in the build stage.
COPY scripts/uv-requirements.txt scripts/
RUN python -m venv /opt/uv \
    && /opt/uv/bin/pip install --require-hashes --no-deps -r scripts/uv-requirements.txt
COPY pyproject.toml uv.lock README.md ./
COPY cacheproxy ./cacheproxy
# --locked: the build fails rather than install anything but uv.lock.
RUN /opt/uv/bin/uv sync --locked --no-dev --no-editable --python /usr/local/bin/python3

# -- run: the virtualenv alone, as an unprivileged user -----------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/cacheproxy/bin:$PATH

COPY --from=build /opt/cacheproxy /opt/cacheproxy
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin cacheproxy

USER 10001:10001

# Inside a container the proxy must listen on every interface; the port is
# the proxy's default (next to slurmrestd's 6820).
ENV CACHEPROXY_HOST=0.0.0.0 \
    CACHEPROXY_PORT=6821
EXPOSE 6821

# Liveness only: /_cacheproxy/health answers 200 while Redis is away too (the
# proxy then serves from slurmrestd).  The probe reads the server's own
# settings, so it uses https when CACHEPROXY_TLS_CERT is set.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-m", "cacheproxy.healthcheck"]

ENTRYPOINT ["cacheproxy"]
CMD ["serve"]
