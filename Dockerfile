# cacheproxy in a container: one replica.  Several replicas behind a load
# balancer share one Redis (docs/redis-tier.md):
#
#   docker build -t cacheproxy .
#   docker run --env-file config/cacheproxy.env.example -e CACHEPROXY_HOST=0.0.0.0 \
#       -p 6821:6821 cacheproxy
#
# The install step is the README's: `pip install .` (no test or bench extras).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY cacheproxy ./cacheproxy
RUN pip install . \
    && rm -rf /src \
    && useradd --system --uid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin cacheproxy
WORKDIR /

USER cacheproxy

# Inside a container the proxy must listen on every interface; the port is
# the proxy's default (next to slurmrestd's 6820).
ENV CACHEPROXY_HOST=0.0.0.0 \
    CACHEPROXY_PORT=6821
EXPOSE 6821

# Liveness only: /_cacheproxy/health answers 200 while Redis is away too (the
# proxy then serves from slurmrestd).  No curl in the slim image: Python.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/_cacheproxy/health' % os.environ.get('CACHEPROXY_PORT', '6821'), timeout=2)"]

ENTRYPOINT ["cacheproxy"]
CMD ["serve"]
