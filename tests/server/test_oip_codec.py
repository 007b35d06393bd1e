"""The Open Inference Protocol's tensor codec and HTTP binary-tensor bodies (server/protocols/oip/), checked
against bodies that tritonclient itself builds and parses.

tritonclient.http is imported here, tritonclient.grpc is not: its generated modules define the same
protobuf symbols as protos/inference and one process cannot hold both (see tests/test_proto.py). The last
tests check that perf_analyzer, the protocol's load tester, is installed and runs.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from server.core.errors import InvalidRequest
from server.protocols.oip import binary, tensors
from server.protocols.oip.binary import OutputTensor

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (the dev extra)")
from tritonclient.http import _utils as http_utils

RNG = np.random.default_rng(7)


def tritonclient_request(inputs, outputs=None, request_id="", parameters=None) -> tuple[bytes, int | None]:
    """A request body exactly as tritonclient.http.InferenceServerClient.infer sends it."""
    return http_utils._get_inference_request(inputs=inputs, request_id=request_id, outputs=outputs, sequence_id=0,
                                             sequence_start=False, sequence_end=False, priority=0, timeout=None,
                                             custom_parameters=parameters)


def infer_input(name: str, array: np.ndarray, binary_data: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), tensors.datatype_of(array.dtype))
    tensor.set_data_from_numpy(array, binary_data=binary_data)
    return tensor


def response_as_tritonclient_reads_it(body: bytes, header_length: int | None) -> httpclient.InferResult:
    return httpclient.InferResult.from_response_body(body, header_length=header_length)


# ---------------------------------------------------------------------------------------------- datatypes


@pytest.mark.parametrize("datatype, dtype", [("BOOL", np.bool_), ("UINT8", np.uint8), ("UINT16", np.uint16),
                                             ("UINT32", np.uint32), ("UINT64", np.uint64), ("INT8", np.int8),
                                             ("INT16", np.int16), ("INT32", np.int32), ("INT64", np.int64),
                                             ("FP16", np.float16), ("FP32", np.float32), ("FP64", np.float64)])
def test_datatype_table_agrees_with_tritonclient(datatype, dtype):
    from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

    assert tensors.numpy_dtype("x", datatype) == np.dtype(dtype)
    assert tensors.numpy_dtype("x", datatype).byteorder in ("<", "|", "=")
    assert tensors.datatype_of(dtype) == datatype == np_to_triton_dtype(np.dtype(dtype))
    assert np.dtype(triton_to_np_dtype(datatype)) == tensors.DATATYPES[datatype]


def test_big_endian_arrays_have_the_same_datatype_and_are_encoded_little_endian():
    array = np.arange(4, dtype=">u4").reshape(2, 2)
    datatype, shape, raw = tensors.encode_tensor(array)
    assert (datatype, shape) == ("UINT32", [2, 2])
    assert raw == bytes([0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0])


def test_a_non_contiguous_array_is_encoded_row_major():
    array = np.arange(6, dtype=np.int16).reshape(2, 3).T  # a transposed view, column-major in memory
    assert np.frombuffer(tensors.raw_bytes(array), "<i2").tolist() == [0, 3, 1, 4, 2, 5]


@pytest.mark.parametrize("datatype, message", [("BYTES", "BYTES tensors are not supported"),
                                               ("FLOAT32", "unknown datatype 'FLOAT32'"),
                                               ("fp32", "unknown datatype 'fp32'"), ("BF16", "unknown datatype"),
                                               (None, "unknown datatype None")])
def test_unsupported_datatypes_are_refused_naming_the_tensor(datatype, message):
    with pytest.raises(InvalidRequest, match=message) as caught:
        tensors.decode_tensor("latent", datatype, [1], raw=b"\0\0\0\0")
    assert "'latent'" in str(caught.value)


def test_an_array_without_a_protocol_datatype_cannot_be_encoded():
    with pytest.raises(ValueError, match="complex128"):
        tensors.encode_tensor(np.zeros(2, dtype=np.complex128))


# ---------------------------------------------------------------------------------------------- raw tensors


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float16, np.float32, np.float64, np.bool_])
def test_raw_tensors_round_trip(dtype):
    array = (RNG.standard_normal((3, 4, 5)) * 50).astype(dtype)
    datatype, shape, raw = tensors.encode_tensor(array)
    decoded = tensors.decode_tensor("t", datatype, shape, raw=raw)
    assert decoded.dtype == array.dtype and decoded.shape == (3, 4, 5)
    np.testing.assert_array_equal(decoded, array)


def test_raw_decoding_is_a_read_only_view_without_a_copy():
    raw = np.arange(16, dtype="<f4").tobytes()
    decoded = tensors.decode_tensor("latent", "FP32", [1, 16], raw=raw)
    assert decoded.base is not None and not decoded.flags.writeable
    assert decoded[0, 3] == 3.0


@pytest.mark.parametrize("shape, size, message", [
    ([2, 16], 127, "needs 128 bytes, got 127"),
    ([2, 16], 132, "needs 128 bytes, got 132"),
    ([0, 16], 4, "needs 0 bytes, got 4"),
])
def test_raw_size_must_match_the_shape(shape, size, message):
    with pytest.raises(InvalidRequest, match=message) as caught:
        tensors.decode_tensor("latent", "FP32", shape, raw=bytes(size))
    assert "'latent'" in str(caught.value)


def test_an_empty_batch_decodes_to_an_empty_array():
    assert tensors.decode_tensor("latent", "FP32", [0, 16], raw=b"").shape == (0, 16)


@pytest.mark.parametrize("shape, message", [
    ([-1, 16], "negative dimension"),
    ([2, "16"], "non-integer dimension '16'"),
    ([2, 16.0], "non-integer dimension 16.0"),
    ([True, 16], "non-integer dimension True"),
    ("16", "must be a list of integers"),
    (None, "must be a list of integers"),
])
def test_malformed_shapes_are_refused(shape, message):
    with pytest.raises(InvalidRequest, match=message):
        tensors.decode_tensor("latent", "FP32", shape, raw=bytes(128))


def test_a_huge_shape_is_refused_before_anything_is_allocated():
    # 2**62 elements would be an exabyte-sized allocation; even 2**31 + 1 one-byte elements is refused.
    with pytest.raises(InvalidRequest, match=r"more than the 2147483648"):
        tensors.decode_tensor("latent", "FP32", [2**31, 2**31], raw=b"")
    with pytest.raises(InvalidRequest, match="2147483649 elements"):
        tensors.decode_tensor("image", "UINT8", [2**31 + 1], contents=[])
    assert tensors.element_count("image", [2**31]) == 2**31  # the limit itself is allowed


def test_raw_and_typed_contents_together_are_refused():
    with pytest.raises(InvalidRequest, match="both raw data and typed contents"):
        tensors.decode_tensor("latent", "FP32", [1], raw=bytes(4), contents=[1.0])
    with pytest.raises(InvalidRequest, match="no data"):
        tensors.decode_tensor("latent", "FP32", [1])


# ---------------------------------------------------------------------------------------------- typed contents


def test_typed_grpc_contents_decode_by_datatype():
    from protos.inference import grpc_service_pb2 as pb

    contents = pb.InferTensorContents(fp32_contents=[0.5, -1.25, 2.0, 3.0])
    decoded = tensors.decode_tensor("latent", "FP32", [2, 2], contents=contents)
    assert decoded.dtype == np.float32 and decoded.tolist() == [[0.5, -1.25], [2.0, 3.0]]
    # The narrow integer types travel widened, and come back in their own type.
    small = tensors.decode_tensor("seed", "INT8", [3], contents=pb.InferTensorContents(int_contents=[-128, 0, 127]))
    assert small.dtype == np.int8 and small.tolist() == [-128, 0, 127]
    pixels = tensors.decode_tensor("image", "UINT8", [2], contents=pb.InferTensorContents(uint_contents=[0, 255]))
    assert pixels.dtype == np.uint8 and pixels.tolist() == [0, 255]
    flags = tensors.decode_tensor("mask", "BOOL", [2], contents=pb.InferTensorContents(bool_contents=[True, False]))
    assert flags.dtype == np.bool_ and flags.tolist() == [True, False]


def test_typed_contents_in_the_wrong_field_or_out_of_range_are_refused():
    from protos.inference import grpc_service_pb2 as pb

    with pytest.raises(InvalidRequest, match="go in fp32_contents, got fp64_contents"):
        tensors.decode_tensor("latent", "FP32", [1], contents=pb.InferTensorContents(fp64_contents=[1.0]))
    with pytest.raises(InvalidRequest, match="value 300 is out of the range of INT8"):
        tensors.decode_tensor("seed", "INT8", [1], contents=pb.InferTensorContents(int_contents=[300]))
    with pytest.raises(InvalidRequest, match="value 256 is out of the range of UINT8"):
        tensors.decode_tensor("image", "UINT8", [2], contents=pb.InferTensorContents(uint_contents=[1, 256]))
    with pytest.raises(InvalidRequest, match="FP16 has no typed contents field"):
        tensors.decode_tensor("latent", "FP16", [1], contents=pb.InferTensorContents(fp32_contents=[1.0]))
    with pytest.raises(InvalidRequest, match="has 4 elements, the data has 3"):
        tensors.decode_tensor("latent", "FP32", [2, 2], contents=pb.InferTensorContents(fp32_contents=[1, 2, 3]))


def test_grpc_requests_decode_raw_inputs_in_order_and_responses_carry_raw_outputs():
    from protos.inference import grpc_service_pb2 as pb

    latent = RNG.standard_normal((3, 16)).astype(np.float32)
    seed = np.array([5, 6, 7], dtype=np.uint64)
    request = pb.ModelInferRequest(model_name="digits-vae")
    for name, array in (("latent", latent), ("seed", seed)):
        datatype, shape, raw = tensors.encode_tensor(array)
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
    # Over the wire and back, as the servicer will receive it.
    arrays = tensors.decode_grpc_inputs(pb.ModelInferRequest.FromString(request.SerializeToString()))
    assert list(arrays) == ["latent", "seed"]
    np.testing.assert_array_equal(arrays["latent"], latent)
    np.testing.assert_array_equal(arrays["seed"], seed)

    response = pb.ModelInferResponse(model_name="digits-vae")
    images = RNG.integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
    tensors.add_grpc_output(response, "image", images)
    tensors.add_grpc_output(response, "latent", latent)
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("image", "UINT8", [3, 1, 28, 28]), ("latent", "FP32", [3, 16])]
    assert response.raw_output_contents[0] == images.tobytes()
    assert np.frombuffer(response.raw_output_contents[1], "<f4").tolist() == latent.reshape(-1).tolist()


def test_grpc_requests_decode_typed_inputs_and_refuse_mixed_or_missing_data():
    from protos.inference import grpc_service_pb2 as pb

    request = pb.ModelInferRequest()
    request.inputs.add(name="latent", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend([0.5, 1.5])
    assert tensors.decode_grpc_inputs(request)["latent"].tolist() == [[0.5, 1.5]]

    request.raw_input_contents.append(np.zeros(2, "<f4").tobytes())  # raw too: both forms at once
    with pytest.raises(InvalidRequest, match="typed contents in a request that sends raw_input_contents"):
        tensors.decode_grpc_inputs(request)
    request.inputs.add(name="seed", datatype="UINT64", shape=[1])
    with pytest.raises(InvalidRequest, match="raw_input_contents has 1 entries for 2 inputs"):
        tensors.decode_grpc_inputs(request)

    no_data = pb.ModelInferRequest()
    no_data.inputs.add(name="latent", datatype="FP32", shape=[1, 2])
    with pytest.raises(InvalidRequest, match="tensor 'latent': no data"):
        tensors.decode_grpc_inputs(no_data)
    twice = pb.ModelInferRequest(raw_input_contents=[b"\0", b"\1"])
    twice.inputs.add(name="x", datatype="UINT8", shape=[1])
    twice.inputs.add(name="x", datatype="UINT8", shape=[1])
    with pytest.raises(InvalidRequest, match="'x' appears twice"):
        tensors.decode_grpc_inputs(twice)


# ---------------------------------------------------------------------------------------------- JSON data


def test_json_data_flat_or_nested_decodes_to_the_same_array():
    flat = tensors.decode_tensor("latent", "FP32", [2, 3], contents=[1, 2, 3, 4, 5.5, 6])
    nested = tensors.decode_tensor("latent", "FP32", [2, 3], contents=[[1, 2, 3], [4, 5.5, 6]])
    assert flat.dtype == nested.dtype == np.float32
    np.testing.assert_array_equal(flat, nested)
    assert nested[1, 1] == 5.5


@pytest.mark.parametrize("datatype, data, message", [
    ("FP32", [[1, 2], [3]], "ragged"),
    ("FP32", [1, "2"], "must be numbers"),
    ("FP32", [True, False], "FP32 data must be numbers, got bool"),
    ("INT32", [1.5, 2.0], "INT32 data must be integers, got float64"),
    ("BOOL", [0, 1], "BOOL data must be booleans, got int64"),
    ("UINT8", [-1, 3], "value -1 is out of the range of UINT8"),
    ("FP32", [1, 2, 3], "has 4 elements, the data has 3"),
    ("FP32", {"a": 1}, "data must be a list"),
])
def test_json_data_that_would_change_a_value_is_refused(datatype, data, message):
    with pytest.raises(InvalidRequest, match=message) as caught:
        tensors.decode_tensor("latent", datatype, [2, 2] if "4 elements" in message else [2], contents=data)
    assert "'latent'" in str(caught.value)


def test_json_integers_beyond_int64_are_kept_exact():
    # numpy alone would make [2**64 - 1, 1] a float64 array and round both values.
    decoded = tensors.decode_tensor("seed", "UINT64", [2, 1], contents=[[2**64 - 1], [1]])
    assert decoded.dtype == np.uint64 and decoded.shape == (2, 1) and int(decoded[0, 0]) == 2**64 - 1
    assert int(decoded[1, 0]) == 1
    with pytest.raises(InvalidRequest, match="value 18446744073709551616 is out of the range of UINT64"):
        tensors.decode_tensor("seed", "UINT64", [1], contents=[2**64])
    with pytest.raises(InvalidRequest, match="value 9223372036854775808 is out of the range of INT64"):
        tensors.decode_tensor("seed", "INT64", [2], contents=[2**63, -1])


# ---------------------------------------------------------------------------------------------- request bodies


def test_parses_a_binary_request_built_by_tritonclient():
    latent = RNG.standard_normal((4, 16)).astype(np.float32)
    seed = np.array([[7], [8], [9], [10]], dtype=np.int64)
    body, header_length = tritonclient_request(
        [infer_input("latent", latent), infer_input("seed", seed)],
        outputs=[httpclient.InferRequestedOutput("image", binary_data=True)], request_id="r-1",
        parameters={"sampler": "mixture", "temperature": 0.5})
    assert header_length is not None and len(body) == header_length + latent.nbytes + seed.nbytes

    request = binary.parse_request(body, str(header_length))  # HTTP header values arrive as strings
    assert request.header["id"] == "r-1"
    assert request.header["parameters"] == {"sampler": "mixture", "temperature": 0.5}
    assert set(request.binary) == {"latent", "seed"}
    arrays = binary.decode_inputs(request)
    assert list(arrays) == ["latent", "seed"]
    np.testing.assert_array_equal(arrays["latent"], latent)
    np.testing.assert_array_equal(arrays["seed"], seed)
    assert binary.requested_outputs(request.header, ["image", "latent_mean"]) == [("image", True)]


def test_parses_a_json_only_request_built_by_tritonclient():
    latent = RNG.standard_normal((2, 3)).astype(np.float32)
    mask = np.array([[True], [False]])
    body, header_length = tritonclient_request(
        [infer_input("latent", latent, binary_data=False), infer_input("mask", mask, binary_data=False)],
        outputs=[httpclient.InferRequestedOutput("image", binary_data=False)])
    assert header_length is None

    request = binary.parse_request(body, None)
    assert request.binary == {}
    arrays = binary.decode_inputs(request)
    np.testing.assert_array_equal(arrays["latent"], latent)  # JSON floats round-trip float32 exactly
    assert arrays["mask"].dtype == np.bool_ and arrays["mask"].tolist() == [[True], [False]]
    assert binary.requested_outputs(request.header, ["image"]) == [("image", False)]


def test_mixed_binary_and_json_inputs_keep_their_sections_in_order():
    first = np.arange(6, dtype=np.uint8).reshape(2, 3)
    middle = np.array([1.5, 2.5], dtype=np.float64)
    last = np.arange(4, dtype=np.int16)
    body, header_length = tritonclient_request([infer_input("first", first), infer_input("middle", middle, False),
                                                infer_input("last", last)])
    request = binary.parse_request(body, header_length)
    assert set(request.binary) == {"first", "last"}
    arrays = binary.decode_inputs(request)
    np.testing.assert_array_equal(arrays["first"], first)
    np.testing.assert_array_equal(arrays["middle"], middle)
    np.testing.assert_array_equal(arrays["last"], last)


def test_without_listed_outputs_tritonclient_asks_for_every_output_in_binary():
    body, header_length = tritonclient_request([infer_input("latent", np.zeros((1, 16), np.float32))])
    header = binary.parse_request(body, header_length).header
    assert binary.requested_outputs(header, ["image", "latent_mean"]) == [("image", True), ("latent_mean", True)]
    assert binary.requested_outputs({}, ["image"]) == [("image", False)]  # the protocol's default is JSON


def test_requested_outputs_must_exist_and_say_true_or_false():
    with pytest.raises(InvalidRequest, match="'logits' is not an output of the model"):
        binary.requested_outputs({"outputs": [{"name": "logits"}]}, ["image"])
    with pytest.raises(InvalidRequest, match="binary_data must be true or false"):
        binary.requested_outputs({"outputs": [{"name": "image", "parameters": {"binary_data": "yes"}}]}, ["image"])


def _binary_body(*sections: bytes, sizes: list[int] | None = None, extra: dict | None = None) -> tuple[bytes, int]:
    sizes = [len(s) for s in sections] if sizes is None else sizes
    header = {"inputs": [{"name": f"t{i}", "datatype": "UINT8", "shape": [len(s)],
                          "parameters": {"binary_data_size": size}} for i, (s, size) in enumerate(zip(sections, sizes))],
              **(extra or {})}
    text = json.dumps(header).encode()
    return text + b"".join(sections), len(text)


@pytest.mark.parametrize("header_length, message", [
    ("-1", "is negative"),
    ("12x", "must be an integer, got '12x'"),
    ("100000", "is 100000 but the body has only"),
])
def test_a_bad_header_length_is_refused(header_length, message):
    body, _ = _binary_body(b"abc")
    with pytest.raises(InvalidRequest, match=message):
        binary.parse_request(body, header_length)


def test_a_header_length_that_cuts_the_json_short_is_malformed_json():
    body, length = _binary_body(b"abc")
    with pytest.raises(InvalidRequest, match="JSON inference header is malformed"):
        binary.parse_request(body, length - 1)


@pytest.mark.parametrize("body, message", [
    (b"{not json", "malformed"),
    (b"[1, 2]", "must be an object"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"inputs": {"name": "x"}}', "'inputs' must be a list"),
])
def test_malformed_json_headers_are_refused(body, message):
    with pytest.raises(InvalidRequest, match=message):
        binary.parse_request(body, None)


def test_binary_sizes_must_add_up_to_the_rest_of_the_body():
    body, length = _binary_body(b"abcd", b"ef", sizes=[4, 1])  # one byte left over
    with pytest.raises(InvalidRequest, match="add up to 5 bytes but 6 follow"):
        binary.parse_request(body, length)
    body, length = _binary_body(b"abcd", b"ef", sizes=[4, 3])  # one byte missing
    with pytest.raises(InvalidRequest, match="more than the 6 bytes after the JSON header"):
        binary.parse_request(body, length)


def test_trailing_bytes_after_the_sections_are_refused():
    body, length = _binary_body(b"abcd", b"ef")
    assert bytes(binary.parse_request(body, length).binary["t1"]) == b"ef"
    with pytest.raises(InvalidRequest, match="add up to 6 bytes but 7 follow"):
        binary.parse_request(body + b"!", length)


@pytest.mark.parametrize("size, message", [(-4, "non-negative integer, got -4"), ("4", "got '4'"),
                                           (True, "got True"), (4.0, "got 4.0")])
def test_binary_data_size_must_be_a_non_negative_integer(size, message):
    body, length = _binary_body(b"abcd", sizes=[size])
    with pytest.raises(InvalidRequest, match=message):
        binary.parse_request(body, length)


def test_binary_data_size_on_a_request_without_the_header_length_is_refused():
    body, length = _binary_body(b"abcd")
    with pytest.raises(InvalidRequest, match="has no Inference-Header-Content-Length header"):
        binary.parse_request(body[:length], None)  # valid JSON on its own, but it announces a section


def test_an_input_with_both_data_and_a_binary_section_is_refused():
    header = {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [2], "data": [1, 2],
                          "parameters": {"binary_data_size": 2}}]}
    text = json.dumps(header).encode()
    with pytest.raises(InvalidRequest, match="both 'data' and parameters.binary_data_size"):
        binary.parse_request(text + b"\x01\x02", len(text))


def test_inputs_must_be_named_once_and_carry_data():
    with pytest.raises(InvalidRequest, match="appears twice"):
        binary.decode_inputs(binary.parse_request(json.dumps({"inputs": [
            {"name": "x", "datatype": "UINT8", "shape": [1], "data": [1]},
            {"name": "x", "datatype": "UINT8", "shape": [1], "data": [2]}]}).encode(), None))
    with pytest.raises(InvalidRequest, match="neither 'data' nor"):
        binary.decode_inputs(binary.parse_request(b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1]}]}',
                                                  None))
    with pytest.raises(InvalidRequest, match="needs a 'name' string"):
        binary.decode_inputs(binary.parse_request(b'{"inputs": [{"datatype": "UINT8", "shape": [1], "data": [1]}]}',
                                                  None))
    with pytest.raises(InvalidRequest, match="has no 'inputs'"):
        binary.decode_inputs(binary.parse_request(b'{"id": "1"}', None))


def test_a_binary_section_of_the_wrong_size_for_its_shape_names_the_input():
    header = {"inputs": [{"name": "latent", "datatype": "FP32", "shape": [1, 16],
                          "parameters": {"binary_data_size": 60}}]}
    text = json.dumps(header).encode()
    request = binary.parse_request(text + bytes(60), len(text))
    with pytest.raises(InvalidRequest, match="tensor 'latent': shape \\[1, 16\\] of FP32 needs 64 bytes, got 60"):
        binary.decode_inputs(request)


# ---------------------------------------------------------------------------------------------- response bodies


def test_a_binary_response_reads_back_in_tritonclient():
    images = RNG.integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
    means = RNG.standard_normal((3, 16)).astype(np.float32)
    body, header_length = binary.build_response(
        {"model_name": "digits-vae", "model_version": "2", "id": "r-9"},
        [OutputTensor("image", images), OutputTensor("latent_mean", means, parameters={"note": "mean"})])
    assert header_length is not None and len(body) == header_length + images.nbytes + means.nbytes

    result = response_as_tritonclient_reads_it(body, header_length)
    np.testing.assert_array_equal(result.as_numpy("image"), images)
    np.testing.assert_array_equal(result.as_numpy("latent_mean"), means)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("digits-vae", "2", "r-9")
    output = result.get_output("image")
    assert output["datatype"] == "UINT8" and output["shape"] == [3, 1, 28, 28]
    assert output["parameters"] == {"binary_data_size": images.nbytes}
    assert result.get_output("latent_mean")["parameters"] == {"note": "mean", "binary_data_size": means.nbytes}


def test_a_json_response_reads_back_in_tritonclient_and_has_no_header_length():
    means = np.array([[0.5, -1.0], [2.25, 3.0]], dtype=np.float32)
    counts = np.array([1, 2**40], dtype=np.int64)
    body, header_length = binary.build_response({"model_name": "m", "model_version": "1"},
                                                [OutputTensor("mean", means, binary=False),
                                                 OutputTensor("count", counts, binary=False)])
    assert header_length is None
    document = json.loads(body)
    assert document["outputs"][0]["data"] == [0.5, -1.0, 2.25, 3.0]  # flat, row-major
    assert "parameters" not in document["outputs"][0]
    result = response_as_tritonclient_reads_it(body, header_length)
    np.testing.assert_array_equal(result.as_numpy("mean"), means)
    np.testing.assert_array_equal(result.as_numpy("count"), counts)


def test_a_response_mixing_binary_and_json_outputs_reads_back_in_tritonclient():
    images = RNG.integers(0, 256, (2, 4), dtype=np.uint8)
    means = np.array([1.5, 2.5], dtype=np.float64)
    fp16 = np.array([0.5, 65504.0], dtype=np.float16)
    body, header_length = binary.build_response({"model_name": "m"}, [
        OutputTensor("image", images), OutputTensor("mean", means, binary=False), OutputTensor("half", fp16)])
    result = response_as_tritonclient_reads_it(body, header_length)
    np.testing.assert_array_equal(result.as_numpy("image"), images)
    np.testing.assert_array_equal(result.as_numpy("mean"), means)
    half = result.as_numpy("half")
    assert half.dtype == np.float16 and half.tolist() == [0.5, 65504.0]


def test_nan_cannot_go_out_as_json_but_can_as_binary():
    values = np.array([np.nan, 1.0], dtype=np.float32)
    with pytest.raises(InvalidRequest, match="NaN or infinity"):
        binary.build_response({}, [OutputTensor("mean", values, binary=False)])
    body, header_length = binary.build_response({}, [OutputTensor("mean", values)])
    assert np.isnan(response_as_tritonclient_reads_it(body, header_length).as_numpy("mean")[0])



# ---------------------------------------------------------------------------------------------- perf_analyzer


def test_perf_analyzer_starts_with_the_plugins_environment_and_not_without_it(perf_analyzer):
    """`make tools` installed a perf_analyzer that runs: --version answers, and it is the CUDA runtime
    directory the plugin adds to LD_LIBRARY_PATH that lets it load."""
    version = perf_analyzer.run("--version")
    assert version.returncode == 0 and "Perf Analyzer Version" in version.stdout + version.stderr, version
    bare = dict(perf_analyzer.env, LD_LIBRARY_PATH="")
    unloaded = subprocess.run([*perf_analyzer.argv, "--version"], env=bare, check=False, capture_output=True,
                              text=True, timeout=60)
    assert unloaded.returncode != 0 and "libcudart.so.12" in unloaded.stderr


def test_perf_analyzer_knows_the_options_the_benchmarks_use_and_reports_a_closed_port(perf_analyzer):
    usage = perf_analyzer.run("--help")  # not an option of its own: it prints the usage and exits 99
    assert usage.returncode == 99
    for option in ("-m <model name>", "-u <URL for inference service>", "-i <Protocol used to communicate",
                   "--input-data", "--streaming", "--concurrency-range"):
        assert option in usage.stdout + usage.stderr, option
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = perf_analyzer.run("-m", "digits-vae", "-i", "grpc", "-u", f"127.0.0.1:{port}", timeout=60)
    output = closed.stdout + closed.stderr
    assert closed.returncode == 99 and "failed to get model metadata" in output and "onnect" in output, output


# ---------------------------------------------------------------------------------------------- over HTTP


_ECHO_TENSOR = {"datatype": "FP32", "shape": [-1, 4]}
_ECHO_DOCUMENTS = {
    "/v2": {"name": "echo-test", "version": "0", "extensions": ["binary_tensor_data"]},
    "/v2/models/echo": {"name": "echo", "versions": ["1"], "platform": "aegen",
                        "inputs": [{"name": "INPUT", **_ECHO_TENSOR}], "outputs": [{"name": "OUTPUT", **_ECHO_TENSOR}]},
    "/v2/models/echo/config": {"name": "echo", "platform": "aegen", "max_batch_size": 8,
                               "input": [{"name": "INPUT", "data_type": "TYPE_FP32", "dims": [4]}],
                               "output": [{"name": "OUTPUT", "data_type": "TYPE_FP32", "dims": [4]}]},
}


class _EchoHandler(BaseHTTPRequestHandler):
    """The REST side of an "echo" model, with nothing but this codec between the socket and the model."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

    def log_message(self, format, *args):
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        document = _ECHO_DOCUMENTS.get(self.path.rstrip("/"))
        if document is None:
            return self._send(404, b'{"error": "not found"}', {"Content-Type": binary.JSON_CONTENT_TYPE})
        return self._send(200, json.dumps(document).encode(), {"Content-Type": binary.JSON_CONTENT_TYPE})

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        try:
            request = binary.parse_request(body, self.headers.get(binary.HEADER_LENGTH))
            (latent,) = binary.decode_inputs(request).values()
            outputs = [OutputTensor(name, latent, wants_binary)
                       for name, wants_binary in binary.requested_outputs(request.header, ["OUTPUT"])]
            answer, header_length = binary.build_response(
                {"model_name": "echo", "model_version": "1", "id": request.header.get("id", "")}, outputs)
        except InvalidRequest as e:
            return self._send(400, json.dumps({"error": str(e)}).encode(), {"Content-Type": binary.JSON_CONTENT_TYPE})
        headers = {"Content-Type": binary.JSON_CONTENT_TYPE if header_length is None else binary.BINARY_CONTENT_TYPE}
        if header_length is not None:
            headers[binary.HEADER_LENGTH] = str(header_length)
        return self._send(200, answer, headers)


@pytest.fixture(scope="module")
def echo_http():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.mark.parametrize("binary_data", [True, False])
def test_tritonclient_http_round_trips_through_the_codec(echo_http, binary_data):
    client = httpclient.InferenceServerClient(echo_http)
    values = np.arange(8, dtype=np.float32).reshape(2, 4) / 7
    result = client.infer("echo", [infer_input("INPUT", values, binary_data)], request_id="req-3",
                          outputs=[httpclient.InferRequestedOutput("OUTPUT", binary_data=binary_data)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT"), values)
    assert result.get_response()["id"] == "req-3"
    with pytest.raises(httpclient.InferenceServerException, match="needs 32 bytes, got 28"):
        bad = httpclient.InferInput("INPUT", [2, 4], "FP32")
        bad.set_data_from_numpy(values)
        bad._raw_data = bad._raw_data[:28]  # a client that lies about its shape
        bad._parameters["binary_data_size"] = 28
        client.infer("echo", [bad])


def test_perf_analyzer_measures_the_codec_over_http_with_binary_tensors(echo_http, perf_analyzer):
    """perf_analyzer's own C++ HTTP client: binary inputs in, binary outputs back, parsed by it."""
    result = perf_analyzer.run("-m", "echo", "-i", "http", "-u", echo_http, "-b", "2",
                               "--measurement-mode", "count_windows", "--measurement-request-count", "20",
                               "-s", "1000", "--max-trials", "3", timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(r"Concurrency: 1, throughput: [\d.]+ infer/sec", output), output
