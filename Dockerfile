# The Asset Service on its embedded default (SQLite + local files under /data).
# Not built in CI (no Docker engine there); `docker build -t asset-service .` to try it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ASSET_SERVICE_LISTEN=0.0.0.0:50051 \
    ASSET_SERVICE_STORAGE_ROOT=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY asset_service ./asset_service
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /app asset \
    && mkdir -p /data /incoming && chown asset /data /incoming

USER asset
VOLUME ["/data"]
EXPOSE 50051
# grpc_health_probe-style checks: grpc.health.v1 is served on the same port.
ENTRYPOINT ["asset-service"]
CMD ["--import-root", "/incoming"]
