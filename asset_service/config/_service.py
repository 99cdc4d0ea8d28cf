"""The service's settings: where it listens, what it logs, how it stops, leases."""

from __future__ import annotations

from argparse import ArgumentTypeError
from dataclasses import dataclass

from asset_service.config._kinds import INTERVAL
from asset_service.options import ADDRESS, COUNT, WHOLE_SECONDS, Kind, choice, setting


def _workers(text: str) -> int:
    """'auto' -> 0 (one per core, worked out at start-up), else a count above 0."""
    if text.strip().lower() == "auto":
        return 0
    count = COUNT.parse(text)
    if count < 1:
        raise ArgumentTypeError(f"{text!r} is not auto or a count above 0")
    return count


WORKERS = Kind(
    "workers", _workers, "auto, or a whole number above 0", lambda n: str(n or "auto"), "N"
)


@dataclass(frozen=True)
class ServiceSettings:
    """The "service" group: where it listens, what it logs, how it stops, leases."""

    listen: str = setting(
        ADDRESS,
        "127.0.0.1:50051",
        "host:port to serve on; port 0 picks a free port (logged at start-up)",
        group="service",
    )
    log_level: str = setting(
        choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO", "logging threshold", group="service"
    )
    shutdown_grace_seconds: float = setting(
        INTERVAL,
        "10s",
        "on SIGTERM/SIGINT readiness (health of asset.v1.AssetService) answers NOT_SERVING "
        'at once while liveness ("") stays SERVING, and calls in flight get this long to '
        "finish while the server still listens (new calls too, until load balancers notice); "
        "then it closes, ending what is left. The process exits within this plus a few "
        "seconds, whatever is stuck",
        group="service",
        flag="--shutdown-grace",
    )
    health_interval_seconds: float = setting(
        INTERVAL,
        "2s",
        "time between the database and storage checks behind readiness (health of "
        "asset.v1.AssetService; each check gets this long, at least 1s)",
        group="service",
        flag="--health-interval",
    )
    workers: int = setting(
        WORKERS,
        "1",
        "serving processes behind the one --listen port, sharing the database and storage "
        "(the kernel spreads connections over them, SO_REUSEPORT); 'auto' starts one per core "
        "(CPU affinity and cgroup quota). A supervisor restarts a worker that dies and passes "
        "SIGTERM/SIGHUP on. 1 serves in this process alone: what a container scaled by "
        "replicas, or a small machine, wants; a second server on the same port or SQLite "
        "file is refused either way. Not with memory:// or a unix: address",
        group="service",
    )
    max_lease_seconds: int = setting(
        WHOLE_SECONDS.where(lambda seconds: seconds > 0, "above 0"),
        "86400",
        "longest lease a promise may be created or renewed with (CreatePendingAsset / "
        "RenewLease lease_seconds); a task that runs longer renews a shorter lease",
        group="service",
    )
    lease_check_interval_seconds: float = setting(
        INTERVAL,
        "1s",
        "time between sweeps that fail PENDING assets whose lease ran out: such an asset "
        "becomes FAILED at most this long after its lease_expire_time (one server sweeps at "
        "a time; if it dies, another takes over within three intervals)",
        group="service",
        flag="--lease-check-interval",
    )
