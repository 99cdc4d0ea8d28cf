"""Cases a run leaves out for want of a backend: deselected (never run or passed), counted."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import pytest

from tests.backends import LACKS, grpcurl_missing, minio_missing, missing_backends

# Fixtures that bring a backend up: a case using one needs that backend.
FIXTURE_BACKENDS = {"minio": "s3", "ferretdb_url": "ferretdb", "ferretdb_process": "ferretdb"}
# Parametrized fixtures whose parameter is a backend's name (the store and blob contracts).
PARAM_BACKENDS = ("backend", "blob")

LEFT_OUT = pytest.StashKey[Counter[tuple[str, str]]]()
WITHOUT_MONGO = pytest.StashKey[bool]()
ON_SQLITE = pytest.StashKey[int]()
_WORKER_KEY = "left_out"


def absent_backends() -> dict[str, str]:
    """Backends that cannot run here (metadata stores, the object store), with the reason."""
    absent = dict(missing_backends())
    why = minio_missing()
    if why:
        absent["s3"] = f"S3Storage on MinIO: {why}"
    why = grpcurl_missing()
    if why:
        absent["grpcurl"] = f"grpcurl, newest: {why}"
    return absent


def why_left_out(item: pytest.Item, absent: dict[str, str]) -> tuple[str, str] | None:
    """(backend, reason) when this case cannot run here, else None.

    A case needs a backend by a `requires` marker, by a fixture that starts it, or by being
    the contract case parametrized with its name; a store contract case marked `needs` is
    left out for a store that lacks one of those capabilities.
    """
    needed = {
        FIXTURE_BACKENDS[f] for f in getattr(item, "fixturenames", ()) if f in FIXTURE_BACKENDS
    }
    needed |= {str(mark.args[0]) for mark in item.iter_markers("requires")}
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    needed |= {params[name] for name in PARAM_BACKENDS if isinstance(params.get(name), str)}
    for backend in sorted(needed & absent.keys()):
        return backend, f"not run: {absent[backend]}"
    store = params.get("backend")
    lacks = LACKS.get(store, {}) if isinstance(store, str) else {}
    capabilities = {str(cap) for mark in item.iter_markers("needs") for cap in mark.args}
    for cap in sorted(capabilities & lacks.keys()):
        return str(store), f"lacks {cap}: {lacks[cap]}"
    return None


def deselect(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Take out the cases no backend here can run; pytest counts them as deselected."""
    absent = absent_backends()
    counts: Counter[tuple[str, str]] = Counter()
    kept, dropped = [], []
    for item in items:
        why = why_left_out(item, absent)
        if why is None:
            kept.append(item)
        else:
            counts[why] += 1
            dropped.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    config.stash[LEFT_OUT] = counts
    config.stash[WITHOUT_MONGO] = "mongo" in absent
    output = getattr(config, "workeroutput", None)
    if output is not None:  # a pytest-xdist worker: the controller, which collects nothing, reports
        output[_WORKER_KEY] = {
            "counts": [[backend, why, n] for (backend, why), n in counts.items()],
            "on_sqlite": _on_sqlite(kept) if "mongo" in absent else 0,
        }


def from_worker(config: pytest.Config, output: dict[str, object]) -> None:
    """On the controller of a pytest-xdist run: take what a worker's collection left out
    (every worker collects the same cases), for the summary at the end."""
    left = output.get(_WORKER_KEY)
    if not isinstance(left, dict) or LEFT_OUT in config.stash:
        return
    config.stash[LEFT_OUT] = Counter({(b, why): n for b, why, n in left["counts"]})
    config.stash[ON_SQLITE] = int(left["on_sqlite"])


def _on_sqlite(items: Sequence[pytest.Item]) -> int:
    return sum(1 for item in items if "e2e" in item.path.parts)


def report(config: pytest.Config, items: Sequence[pytest.Item] | None = None) -> list[str]:
    """What the collection left out, by backend and reason, with the number of cases; given
    the cases that will run, also how many end-to-end ones run without MongoDB."""
    counts = config.stash.get(LEFT_OUT, Counter())
    if items is not None and config.stash.get(WITHOUT_MONGO, False):
        config.stash[ON_SQLITE] = _on_sqlite(items)
    on_sqlite = config.stash.get(ON_SQLITE, 0)
    if not counts and not on_sqlite:
        return []
    lines = ["left out for want of a backend (deselected: not run, not counted as passed):"]
    lines += [
        f"  {backend}: {n} {_cases(n)} deselected, {why}" for (backend, why), n in _sorted(counts)
    ]
    if on_sqlite:
        lines.append(
            f"  end-to-end: {on_sqlite} {_cases(on_sqlite)}, none on MongoDB (their servers "
            "use sqlite; MONGODB_URI runs them on MongoDB)"
        )
    return lines


def _cases(n: int) -> str:
    return "case" if n == 1 else "cases"


def _sorted(counts: Counter[tuple[str, str]]) -> Iterable[tuple[tuple[str, str], int]]:
    return sorted(counts.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1]))
