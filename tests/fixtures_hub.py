"""Fixtures around the local Hub server (owned by the Hub layer's tests)."""
