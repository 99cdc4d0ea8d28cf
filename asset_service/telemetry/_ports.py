"""The metadata store and blob storage with every call timed (metrics) and traced (a child
span of the call's), by a proxy: the adapters themselves know nothing of it."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

# Method names that are no operation worth a series (they are called for every chunk).
_UNTIMED = frozenset({"new_writer"})


class Timer(Protocol):
    """A histogram by (operation, outcome): telemetry/_metrics.py's."""

    def labels(self, operation: str, outcome: str) -> Any: ...


class Spans(Protocol):
    """telemetry/_tracing.Tracing: a child span of the current call's, or None outside one."""

    def child_span(self, name: str) -> Any: ...


class Observed:
    """`inner` (a MetadataStore or BlobStorage) whose coroutine methods are timed into
    `seconds` and, with `spans`, run in a span named `<component>.<method>` when a call's
    span is current (start-up and the sweeps make none: a trace each would be noise).

    Async generator methods (read, orphans, changes) and plain ones pass through: a span
    across a stream's life would be closed by whichever task drops it. Attributes are read
    from and written to `inner`, so the proxy is transparent to what it wraps.
    """

    def __init__(
        self, inner: Any, component: str, seconds: Timer | None, spans: Spans | None
    ) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_component", component)
        object.__setattr__(self, "_seconds", seconds)
        object.__setattr__(self, "_spans", spans)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name.startswith("_") or name in _UNTIMED or not inspect.iscoroutinefunction(value):
            return value
        wrapped = self._wrap(name, value)
        object.__setattr__(self, name, wrapped)  # found without __getattr__ from now on
        return wrapped

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)
        self.__dict__.pop(name, None)

    def _wrap(
        self, name: str, method: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        span_name = f"{self._component}.{name}"
        spans = self._spans
        seconds = self._seconds
        ok: Any = seconds.labels(name, "ok") if seconds is not None else None

        @functools.wraps(method)
        async def observed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            done = False
            try:
                span = spans.child_span(span_name) if spans is not None else None
                if span is None:
                    result = await method(*args, **kwargs)
                else:
                    with span:
                        result = await method(*args, **kwargs)
                done = True
                return result
            finally:
                if seconds is not None:
                    # An error series only for operations that fail: most never do.
                    series = ok if done else seconds.labels(name, "error")
                    series.observe(time.perf_counter() - start)

        return observed
