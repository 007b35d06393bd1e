"""HTTP inference bodies of the Open Inference Protocol, with Triton's binary-tensor extension.

Without the extension a body is one JSON object whose tensors carry their elements in "data". With it,
the JSON header is followed by the raw bytes of some tensors, back to back; the
`Inference-Header-Content-Length` HTTP header says where the JSON ends, and each binary tensor says its
own size in `parameters.binary_data_size`. Sections follow the order of the tensors in the JSON, so the
sizes must add up to exactly what follows the header. (Triton's docs: server/docs/protocol/
extension_binary_data.md.) tritonclient sends inputs this way and asks for outputs this way by default.

Pure functions over bytes and dicts: the HTTP framework only hands the body and that one header in and
takes the body and the header value out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.core.errors import InvalidRequest
from server.protocols.oip import tensors

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class InferenceBody:
    """A parsed request body: the JSON header and the binary section of each input that has one."""

    header: dict[str, Any]
    binary: dict[str, memoryview] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputTensor:
    """One output for a response: its array, whether it goes binary, and its own parameters."""

    name: str
    array: np.ndarray
    binary: bool = True
    parameters: Mapping[str, Any] = field(default_factory=dict)


def parse_request(body: bytes, header_length: str | int | None) -> InferenceBody:
    """Split a request body into its JSON header and its inputs' binary sections.

    `header_length` is the Inference-Header-Content-Length header's value as received (None when the
    request has no such header: then the whole body is JSON and no tensor may be binary)."""
    view = memoryview(body)
    length = _header_length(header_length, len(view))
    header = _json_object(view if length is None else view[:length])
    inputs = header.get("inputs", [])
    if not isinstance(inputs, list) or not all(isinstance(t, dict) for t in inputs):
        raise InvalidRequest("'inputs' must be a list of tensor objects")
    binary: dict[str, memoryview] = {}
    offset = len(view) if length is None else length
    for tensor in inputs:
        size = _binary_size(tensor)
        if size is None:
            continue
        name = _tensor_name(tensor)
        if length is None:
            raise InvalidRequest(f"input {name!r} has parameters.binary_data_size but the request has no "
                                 f"{HEADER_LENGTH} header: the whole body was read as JSON")
        if "data" in tensor:
            raise InvalidRequest(f"input {name!r} has both 'data' and parameters.binary_data_size")
        if name in binary:
            raise InvalidRequest(f"input {name!r} appears twice")
        if offset + size > len(view):
            raise InvalidRequest(f"the binary sections add up to more than the {len(view) - length} bytes "
                                 f"after the JSON header (input {name!r} needs {size} from byte {offset})")
        binary[name] = view[offset:offset + size]
        offset += size
    if offset != len(view):
        raise InvalidRequest(f"the binary sections add up to {offset - length} bytes but {len(view) - length} "
                             f"follow the JSON header")
    return InferenceBody(header, binary)


def decode_inputs(request: InferenceBody) -> dict[str, np.ndarray]:
    """Every input of a parsed request as a numpy array, by name, in the order they were sent."""
    inputs = request.header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequest("the request has no 'inputs'")
    arrays: dict[str, np.ndarray] = {}
    for tensor in inputs:
        name = _tensor_name(tensor)
        if name in arrays:
            raise InvalidRequest(f"input {name!r} appears twice")
        if name in request.binary:
            arrays[name] = tensors.decode_tensor(name, tensor.get("datatype"), tensor.get("shape"),
                                                 raw=request.binary[name])
        elif "data" in tensor:
            arrays[name] = tensors.decode_tensor(name, tensor.get("datatype"), tensor.get("shape"),
                                                 contents=tensor["data"])
        else:
            raise InvalidRequest(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    return arrays


def requested_outputs(header: Mapping[str, Any], model_outputs: Sequence[str]) -> list[tuple[str, bool]]:
    """(name, binary?) of each output to return: the ones the request lists, or every output of the model.

    An output goes binary when its own `parameters.binary_data` says so, else when the request's
    `parameters.binary_data_output` does (default false, JSON)."""
    parameters = header.get("parameters") or {}
    default = parameters.get("binary_data_output", False) if isinstance(parameters, dict) else False
    if not isinstance(default, bool):
        raise InvalidRequest("parameters.binary_data_output must be true or false")
    listed = header.get("outputs")
    if listed is None:
        return [(name, default) for name in model_outputs]
    if not isinstance(listed, list) or not all(isinstance(o, dict) for o in listed):
        raise InvalidRequest("'outputs' must be a list of objects")
    chosen = []
    for output in listed:
        name = _tensor_name(output, kind="output")
        if name not in model_outputs:
            raise InvalidRequest(f"output {name!r} is not an output of the model ({', '.join(model_outputs)})")
        own = output.get("parameters") or {}
        binary = own.get("binary_data", default) if isinstance(own, dict) else default
        if not isinstance(binary, bool):
            raise InvalidRequest(f"output {name!r}: parameters.binary_data must be true or false")
        chosen.append((name, binary))
    return chosen


def build_response(header: Mapping[str, Any], outputs: Sequence[OutputTensor]) -> tuple[bytes, int | None]:
    """A response body: `header` (model_name, model_version, id, parameters...) with an "outputs" entry
    per tensor, followed by the binary outputs' raw bytes in the same order.

    Returns (body, header length): the length is the value for Inference-Header-Content-Length, None when
    no output is binary (the whole body is JSON; send no such header)."""
    entries = []
    sections = []
    for output in outputs:
        datatype, shape, raw = tensors.encode_tensor(output.array)
        entry: dict[str, Any] = {"name": output.name, "datatype": datatype, "shape": shape}
        parameters = dict(output.parameters)
        if output.binary:
            parameters["binary_data_size"] = len(raw)
            sections.append(raw)
        else:
            # Flat, row-major, as Python numbers: JSON has no float16 or uint64 types of its own.
            entry["data"] = output.array.reshape(-1).tolist()
        if parameters:
            entry["parameters"] = parameters
        entries.append(entry)
    document = {**header, "outputs": entries}
    try:
        text = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:  # NaN or infinity in a JSON output: JSON cannot spell them
        raise InvalidRequest("an output holds NaN or infinity, which JSON cannot carry; ask for it as "
                             "binary data (parameters.binary_data: true)") from None
    if not sections:
        return text, None
    return b"".join([text, *sections]), len(text)


def _header_length(value: str | int | None, body_length: int) -> int | None:
    if value is None:
        return None
    try:
        length = int(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{HEADER_LENGTH} must be an integer, got {value!r}") from None
    if length < 0:
        raise InvalidRequest(f"{HEADER_LENGTH} is negative ({length})")
    if length > body_length:
        raise InvalidRequest(f"{HEADER_LENGTH} is {length} but the body has only {body_length} bytes")
    return length


def _json_object(text: memoryview) -> dict[str, Any]:
    try:
        document = json.loads(bytes(text).decode("utf-8"))  # the protocol's JSON is UTF-8, never UTF-16/32
    except UnicodeDecodeError:
        raise InvalidRequest("the JSON inference header is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise InvalidRequest(f"the JSON inference header is malformed: {e}") from None
    except RecursionError:  # arrays or objects nested thousands deep
        raise InvalidRequest("the JSON inference header is nested too deeply") from None
    if not isinstance(document, dict):
        raise InvalidRequest("the JSON inference header must be an object")
    return document


def _tensor_name(tensor: Mapping[str, Any], kind: str = "input") -> str:
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"every {kind} needs a 'name' string, got {name!r}")
    return name


def _binary_size(tensor: Mapping[str, Any]) -> int | None:
    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidRequest(f"input {tensor.get('name')!r}: 'parameters' must be an object")
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidRequest(f"input {tensor.get('name')!r}: parameters.binary_data_size must be a "
                             f"non-negative integer, got {size!r}")
    return size
