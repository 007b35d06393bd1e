"""Shared pytest fixtures: server (owned by the server work; other tests reuse them)."""
