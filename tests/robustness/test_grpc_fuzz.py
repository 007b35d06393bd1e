"""Fuzzing every aegen.v1 and OIP gRPC method (bench/fuzz/grpc_fuzz.py): a bounded, seeded run in the tests;
`make fuzz` runs the long one."""

from __future__ import annotations

import grpc
import pytest

from bench.fuzz import grpc_fuzz
from bench.fuzz.checks import compare, server_state
from tests.robustness.conftest import RSS_BOUND

INPUTS = 2000


def test_bytes_that_do_not_parse_are_invalid_argument_with_a_message_on_every_method(fuzz_server):
    garbage = b"\x0a\xff\xff\xff\xff\x0f"  # field 1, announcing 4 GiB that never follow
    with grpc.insecure_channel(fuzz_server.target) as channel:
        for method in grpc_fuzz.methods():
            if method.kind == "bidi":
                stream = channel.stream_stream(method.path)(iter([garbage]), timeout=10)
                assert [grpc_fuzz.oip_pb.ModelStreamInferResponse.FromString(r).error_message.split(":")[0]
                        for r in stream] == ["INVALID_ARGUMENT"]
                continue
            call = channel.unary_stream if method.kind == "server_stream" else channel.unary_unary
            with pytest.raises(grpc.RpcError) as raised:
                reply = call(method.path)(garbage, timeout=10)
                list(reply) if method.kind == "server_stream" else None
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method.name
            assert "does not parse as" in raised.value.details(), method.name


@pytest.mark.parametrize("shape", [[2**62] * 300, [1] * 300, [2**63 - 1] * 32], ids=["huge", "300-dims", "32-huge"])
def test_shapes_the_long_fuzz_run_found_are_invalid_argument_in_model_infer_and_its_stream(fuzz_server, shape):
    # Found by `make fuzz`: a product of hundreds of digits could not be printed in its error message, and
    # numpy refuses arrays of more than 64 dimensions: both were INTERNAL.
    request = grpc_fuzz.oip_pb.ModelInferRequest(model_name="digits-vae", inputs=[
        grpc_fuzz.oip_pb.ModelInferRequest.InferInputTensor(name="SEED", datatype="UINT8", shape=shape)],
        raw_input_contents=[b"\x01"])
    with grpc.insecure_channel(fuzz_server.target) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(request.SerializeToString(),
                                                                               timeout=10)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "shape" in raised.value.details() and len(raised.value.details()) < 400
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")(
            iter([request.SerializeToString()]), timeout=10)
        errors = [grpc_fuzz.oip_pb.ModelStreamInferResponse.FromString(r).error_message for r in stream]
    assert len(errors) == 1 and errors[0].startswith("INVALID_ARGUMENT: tensor 'SEED': shape")


def test_fuzzed_calls_never_answer_internal_and_leave_the_server_as_it_was(fuzz_server):
    pid = fuzz_server.process.pid
    before = server_state(fuzz_server.target, fuzz_server.http_url, pid)
    report = grpc_fuzz.run(fuzz_server.target, INPUTS, seed=14)
    after = server_state(fuzz_server.target, fuzz_server.http_url, pid)
    print(f"\n{report.total} gRPC calls: {dict(report.statuses())}; inputs {dict(report.kinds)}")
    assert report.total == INPUTS
    assert report.violation_count == 0, "\n".join(report.violations)
    assert {m for m, _ in report.calls} == {m.name for m in grpc_fuzz.methods()}  # every method was reached
    assert report.statuses()["OK"] > INPUTS // 10  # and valid calls got through, not only refusals
    assert compare(before, after, RSS_BOUND) == []
