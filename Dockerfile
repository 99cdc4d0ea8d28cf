# The Asset Service on its embedded default (SQLite + local files under /data), secured.
# Not built in CI (no Docker engine there); `docker build -t asset-service .` to try it.
# It listens on every interface, so it needs TLS and tokens (docs/security.md); mount them:
#   docker run -v "$PWD/secrets:/run/secrets/asset-service:ro" -p 50051:50051 asset-service
# with server.pem, server.key, tokens.toml (`asset-service token new`) and task-secret
# (`openssl rand -base64 48`). Without them the server exits 2 naming what is missing.
# Add ASSET_SERVICE_TLS_CLIENT_CA=/run/secrets/asset-service/ca.pem for mTLS (and, for the
# HEALTHCHECK, ASSET_SERVICE_HEALTH_TLS_CERT / _KEY: a client certificate that CA signed).
#
# The base image by digest: python:3.11-slim (= 3.11-slim-trixie; Python 3.11.15, Debian
# trixie, built 2026-08-05), the image index digest recorded by docker-library/repo-info
# (repos/python/remote/3.11-slim.md, commit 2477d553d2fd). To move to a newer build, take
# the digest from there (or `docker buildx imagetools inspect python:3.11-slim`) and
# rebuild; the tag is for the reader, the digest is what is pulled.
FROM python:3.11-slim-trixie@sha256:90744cff8f32887f075c47d747a173ff333e9e98801667af93c357fa9f5e28ff

# The *_KEY/*_SECRET/*_TOKENS variables below are paths to mounted files, not secrets.
# hadolint ignore=DL3064
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    ASSET_SERVICE_LISTEN=0.0.0.0:50051 \
    ASSET_SERVICE_STORAGE_ROOT=/data \
    ASSET_SERVICE_TLS_CERT=/run/secrets/asset-service/server.pem \
    ASSET_SERVICE_TLS_KEY=/run/secrets/asset-service/server.key \
    ASSET_SERVICE_TOKENS_FILE=/run/secrets/asset-service/tokens.toml \
    ASSET_SERVICE_TOKEN_SECRET_FILE=/run/secrets/asset-service/task-secret

WORKDIR /app
# Dependencies first, exactly as locked (versions and hashes: `make lock` refreshes the
# file), in a layer of their own that a change of the code does not rebuild.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock

# The server itself, with no dependency resolved here and the base image's own pinned
# setuptools as the build backend (no download at build time).
COPY pyproject.toml README.md ./
COPY asset_service ./asset_service
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && useradd --system --uid 10001 --home-dir /app asset \
    && mkdir -p /data /incoming && chown 10001 /data /incoming

USER 10001
VOLUME ["/data"]
EXPOSE 50051
# Readiness through the server's own probe (README: Probes): exit 0 while the database and
# storage answer, 1 otherwise. It reads the variables above: loopback on the listen port,
# TLS trusting server.pem under its own DNS name. Kubernetes ignores HEALTHCHECK: give it
# a grpc liveness probe ("") and a readiness probe (asset.v1.AssetService), or run
# `asset-service health` as an exec probe where TLS is on.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
    CMD ["asset-service", "health"]
# Certificates are re-read when they change; `docker kill -s HUP` re-reads the tokens.
# SIGTERM drains for ASSET_SERVICE_SHUTDOWN_GRACE (10s), then closes within a few seconds:
# `docker stop` sends SIGKILL after 10s by default, so give it more (`docker run
# --stop-timeout 20`, compose's stop_grace_period: 20s); Kubernetes waits 30s by default.
ENTRYPOINT ["asset-service"]
CMD ["--import-root", "/incoming"]
