"""The Open Inference Protocol (KServe v2, as Triton speaks it) over the data plane.

    models.py         what aegen's models look like through the protocol (generator, .decoder, .encoder),
                      metadata, config, statistics, index and inference: transport-free
    grpc_servicer.py  inference.GRPCInferenceService
    http.py           the v2 REST endpoints and their listener (Starlette on uvicorn)
    http_calls.py     core error → HTTP status, per-call metrics, body limits, JSON of the messages
    tensors.py        OIP tensors ↔ numpy (raw, typed and JSON forms)
    binary.py         Triton's HTTP binary-tensor extension (request and response bodies)
"""
