"""The gRPC boundary: decode requests, call the domain, encode responses."""
