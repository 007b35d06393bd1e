"""The serving core: models, batching, onnxruntime, the data plane. It imports no transport (see docs/server.md)."""
