"""The domain: asset records, the state machine, manifests; no protobuf, no database driver."""
