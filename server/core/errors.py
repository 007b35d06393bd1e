"""The server core's own errors. The servicer turns each into one gRPC status, in one place."""

from __future__ import annotations


class ServerError(Exception):
    """Base of every error the core raises on purpose; the message is meant for the caller."""


class InvalidRequest(ServerError):
    """The request itself is wrong (count, temperature, sampler, shape, dtype): INVALID_ARGUMENT."""


class ModelNotFound(ServerError):
    """No loaded model or version by that name: NOT_FOUND."""


class QueueFull(ServerError):
    """The model version's queue holds --max-queue-samples already: RESOURCE_EXHAUSTED."""


class DeadlineExceeded(ServerError):
    """The request's deadline passed before it was decoded: DEADLINE_EXCEEDED."""


class ShuttingDown(ServerError):
    """The model version was retired or the server is stopping: UNAVAILABLE (the client may retry)."""


class DeviceError(ServerError):
    """The requested execution device cannot be used (e.g. --device cuda without CUDA)."""


class ModelLoadError(ServerError):
    """A model version could not be loaded, verified or warmed up."""
