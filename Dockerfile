# The Asset Service on its embedded default (SQLite + local files under /data), secured.
# Not built in CI (no Docker engine there); `docker build -t asset-service .` to try it.
# It listens on every interface, so it needs TLS and tokens (docs/security.md); mount them:
#   docker run -v "$PWD/secrets:/run/secrets/asset-service:ro" -p 50051:50051 asset-service
# with server.pem, server.key, tokens.toml (`asset-service token new`) and task-secret
# (`openssl rand -base64 48`). Without them the server exits 2 naming what is missing.
# Add ASSET_SERVICE_TLS_CLIENT_CA=/run/secrets/asset-service/ca.pem for mTLS.
FROM python:3.11-slim

# The *_KEY/*_SECRET/*_TOKENS variables below are paths to mounted files, not secrets.
# hadolint ignore=DL3064
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ASSET_SERVICE_LISTEN=0.0.0.0:50051 \
    ASSET_SERVICE_STORAGE_ROOT=/data \
    ASSET_SERVICE_TLS_CERT=/run/secrets/asset-service/server.pem \
    ASSET_SERVICE_TLS_KEY=/run/secrets/asset-service/server.key \
    ASSET_SERVICE_TOKENS_FILE=/run/secrets/asset-service/tokens.toml \
    ASSET_SERVICE_TOKEN_SECRET_FILE=/run/secrets/asset-service/task-secret

WORKDIR /app
COPY pyproject.toml README.md ./
COPY asset_service ./asset_service
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /app asset \
    && mkdir -p /data /incoming && chown asset /data /incoming

USER 10001
VOLUME ["/data"]
EXPOSE 50051
# grpc_health_probe-style checks: grpc.health.v1 is served on the same port, without a
# token (grpc_health_probe -tls -tls-ca-cert ca.pem -addr localhost:50051).
# Certificates are re-read when they change; `docker kill -s HUP` re-reads the tokens.
ENTRYPOINT ["asset-service"]
CMD ["--import-root", "/incoming"]
