"""Asset Service: the gRPC warehouse of a task pipeline."""

__version__ = "0.1.0"
