"""Shared pytest fixtures: checkpoints (owned by the checkpoints work; other tests reuse them)."""
