"""What the server reports about itself: Prometheus metrics, OpenTelemetry traces, access log.

Nothing here loads prometheus_client or the OpenTelemetry SDK unless the settings (or the
OTEL_* variables) ask for them: see _setup.Telemetry.
"""

from asset_service.telemetry._calls import CallObserver, note_error_ref
from asset_service.telemetry._recorder import NO_RECORDER, Recorder
from asset_service.telemetry._setup import Telemetry

__all__ = ["NO_RECORDER", "CallObserver", "Recorder", "Telemetry", "note_error_ref"]
