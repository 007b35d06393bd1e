"""Shared pytest fixtures: repository (owned by the repository work; other tests reuse them)."""
