"""Fixtures that build tiny model families (owned by the merge engine's tests)."""
