"""The Open Inference Protocol (KServe v2) in the flavour of Triton Inference Server: grpc_service.proto and
model_config.proto, with their generated stubs (`python -m protos.generate`)."""
