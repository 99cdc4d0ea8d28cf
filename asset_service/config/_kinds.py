"""Value kinds several groups of settings share."""

from __future__ import annotations

from asset_service.options import COUNT, DURATION, SIZE

# Intervals and timeouts: zero would spin a loop (the health check at 90-99 % CPU, and a
# stop that never ended) or end every call at once.
INTERVAL = DURATION.where(lambda seconds: seconds > 0, "above 0")
POSITIVE = COUNT.where(lambda n: n > 0, "above 0")
POSITIVE_SIZE = SIZE.where(lambda n: n > 0, "above 0")
