"""Tensors of the Open Inference Protocol to numpy arrays and back, for both transports.

A tensor is (name, datatype, shape, elements). The datatype is a protocol string ("FP32", "UINT8"...),
the shape includes the batch dimension, and the elements come one of three ways:

- raw bytes: little-endian, row-major, no padding (gRPC raw_input_contents, HTTP binary sections);
- typed contents: gRPC's InferTensorContents, one repeated field per element type, where the narrow
  integer types travel widened (INT8/INT16 in int_contents, UINT8/UINT16 in uint_contents);
- a JSON list, flat or nested, in the HTTP "data" field.

Every check runs before anything is allocated from the client's numbers, and every failure is an
InvalidRequest naming the tensor, so the transports turn it into INVALID_ARGUMENT / HTTP 400 unchanged.
Outputs are always encoded raw: tritonclient and perf_analyzer decode only raw outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from server.core.errors import InvalidRequest

# Protocol datatype → numpy dtype, little-endian as the protocol's raw form is. BYTES (variable-length
# strings, 4-byte length prefixed) and BF16 (no numpy dtype) are protocol types aegen's models never take.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_BY_DTYPE = {dtype.newbyteorder("="): name for name, dtype in DATATYPES.items()}

# Which InferTensorContents field carries each datatype. FP16 has none: it travels raw only.
CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
_ALL_CONTENTS_FIELDS = (*dict.fromkeys(CONTENTS_FIELDS.values()), "bytes_contents")

# No tensor may hold more elements than this, whatever its byte size: it keeps a shape such as
# [2**40, 2**40] from being turned into an allocation, and sizes fit in 32-bit counters downstream.
MAX_ELEMENTS = 2**31
MAX_DIMS = 32  # dimensions of a tensor (numpy's own limit is 64)


def numpy_dtype(name: str, datatype: str) -> np.dtype:
    """The numpy dtype of a protocol datatype string; InvalidRequest for BYTES and unknown ones."""
    if datatype == "BYTES":
        raise InvalidRequest(f"tensor {name!r}: BYTES tensors are not supported (aegen models take numbers)")
    dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidRequest(f"tensor {name!r}: unknown datatype {datatype!r} (one of {', '.join(DATATYPES)})")
    return dtype


def datatype_of(dtype: np.dtype | type) -> str:
    """The protocol datatype string of a numpy dtype (either byte order); ValueError if it has none."""
    if type(dtype) is not type and (name := _BY_DTYPE.get(dtype)) is not None:  # a native dtype: one lookup
        return name
    dtype = np.dtype(dtype)
    try:
        return _BY_DTYPE[dtype.newbyteorder("=")]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype} has no Open Inference Protocol datatype") from None


def element_count(name: str, shape: Sequence[int]) -> int:
    """The number of elements of `shape`, checked: at most MAX_DIMS integer dimensions, none negative, at
    most MAX_ELEMENTS in all. Computed in Python integers, so it cannot overflow."""
    if type(shape) is list and len(shape) <= MAX_DIMS and all(type(d) is int and d >= 0 for d in shape):
        count = math.prod(shape)  # the common case, checked without the per-dimension messages below
        if count <= MAX_ELEMENTS:
            return count
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise InvalidRequest(f"tensor {name!r}: shape must be a list of integers, got {_shown(shape)}")
    if len(shape) > MAX_DIMS:  # numpy arrays have at most 64
        raise InvalidRequest(f"tensor {name!r}: shape has {len(shape)} dimensions, more than {MAX_DIMS}")
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise InvalidRequest(f"tensor {name!r}: shape {_shown(shape)} has a non-integer dimension "
                                 f"{_shown(dim)}")
        if dim < 0:
            raise InvalidRequest(f"tensor {name!r}: shape {_shown(shape)} has a negative dimension")
    count = math.prod(int(d) for d in shape)
    if count > MAX_ELEMENTS:  # the count, unless it has too many digits to print (hundreds of huge dims)
        shown = f"{count} elements" if count.bit_length() <= 128 else "more elements than that"
        raise InvalidRequest(f"tensor {name!r}: shape {_shown(shape)} has {shown}, more than the {MAX_ELEMENTS} "
                             f"a tensor may hold")
    return count


def _shown(value: Any, limit: int = 200) -> str:
    """`value` for an error message, cut to `limit` characters (a client's value can be any size)."""
    try:
        text = repr(list(value)) if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else repr(
            value)
    except ValueError:  # an integer too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "...]"


def decode_tensor(name: str, datatype: str, shape: Sequence[int], *, raw: bytes | memoryview | None = None,
                  contents: Any = None) -> np.ndarray:
    """One input tensor as a numpy array of `shape`, from exactly one of `raw` (little-endian bytes),
    `contents` as an InferTensorContents message, or `contents` as a JSON "data" list (flat or nested).

    A raw tensor comes back as a read-only view of `raw`, without a copy."""
    dtype = numpy_dtype(name, datatype)
    count = element_count(name, shape)
    shape = tuple(map(int, shape))
    if raw is not None and contents is not None:
        raise InvalidRequest(f"tensor {name!r}: has both raw data and typed contents; send one")
    if raw is not None:
        expected = count * dtype.itemsize
        if len(raw) != expected:
            raise InvalidRequest(f"tensor {name!r}: shape {list(shape)} of {datatype} needs {expected} bytes, "
                                 f"got {len(raw)}")
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    if contents is None:
        raise InvalidRequest(f"tensor {name!r}: no data (neither raw contents nor typed contents)")
    if hasattr(contents, "DESCRIPTOR"):  # an InferTensorContents message
        values = _typed_contents(name, datatype, contents)
    elif isinstance(contents, (list, tuple)):
        values = _json_data(name, datatype, dtype, contents)
    else:
        raise InvalidRequest(f"tensor {name!r}: data must be a list, got {type(contents).__name__}")
    if values.size != count:
        raise InvalidRequest(f"tensor {name!r}: shape {list(shape)} has {count} elements, the data has "
                             f"{values.size}")
    return _converted(name, datatype, dtype, values).reshape(shape)


def _typed_contents(name: str, datatype: str, contents: Any) -> np.ndarray:
    """The values of the one InferTensorContents field that carries `datatype`."""
    field = CONTENTS_FIELDS.get(datatype)
    if field is None:
        raise InvalidRequest(f"tensor {name!r}: {datatype} has no typed contents field; send it as raw bytes")
    others = [f for f in _ALL_CONTENTS_FIELDS if f != field and len(getattr(contents, f))]
    if others:
        raise InvalidRequest(f"tensor {name!r}: a {datatype} tensor's elements go in {field}, got {others[0]}")
    return np.asarray(getattr(contents, field))


def _json_data(name: str, datatype: str, dtype: np.dtype, data: list | tuple) -> np.ndarray:
    """A JSON "data" list as an array of numbers (its nesting is checked; the shape is applied later)."""
    try:
        values = np.asarray(data)
    except ValueError:  # ragged nesting
        raise InvalidRequest(f"tensor {name!r}: data is a ragged nested list") from None
    if dtype.kind in "iu" and values.dtype.kind in "fO":
        # Integers beyond int64 (a UINT64 seed, say) make numpy fall back to float64 or object, which
        # would round them: when every element is an integer, convert them exactly instead.
        flat = np.asarray(data, dtype=object).reshape(-1).tolist()  # the elements as JSON gave them
        if flat and all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
            info = np.iinfo(dtype)
            bad = next((v for v in flat if not info.min <= v <= info.max), None)
            if bad is not None:
                raise InvalidRequest(f"tensor {name!r}: value {bad} is out of the range of {datatype}")
            return np.array(flat, dtype=dtype).reshape(values.shape)
    if values.dtype == object or values.dtype.kind in "USV":
        raise InvalidRequest(f"tensor {name!r}: data for {datatype} must be numbers (or booleans for BOOL)")
    return values


def _converted(name: str, datatype: str, dtype: np.dtype, values: np.ndarray) -> np.ndarray:
    """`values` in `dtype`, refusing what would change a value: booleans from numbers and back, fractions
    into integers, integers out of the datatype's range."""
    kinds = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}[dtype.kind]
    if values.size and values.dtype.kind not in kinds:
        expected = {"b": "booleans", "u": "integers", "i": "integers", "f": "numbers"}[dtype.kind]
        raise InvalidRequest(f"tensor {name!r}: {datatype} data must be {expected}, got {values.dtype.name}")
    if values.size and dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = values.min(), values.max()
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InvalidRequest(f"tensor {name!r}: value {bad} is out of the range of {datatype}")
    return values.astype(dtype, copy=False)


def encode_tensor(array: np.ndarray) -> tuple[str, list[int], bytes]:
    """An output array as (datatype, shape, raw little-endian row-major bytes)."""
    datatype = datatype_of(array.dtype)
    return datatype, list(array.shape), raw_bytes(array)


def raw_bytes(array: np.ndarray) -> bytes:
    """The protocol's raw form of `array`: little-endian, row-major, no padding."""
    little = array.dtype.newbyteorder("<")
    return np.ascontiguousarray(array, dtype=little).tobytes()


def decode_grpc_inputs(request: Any) -> dict[str, np.ndarray]:
    """Every input of a ModelInferRequest as a numpy array, by name, in request order.

    Inputs travel either all raw (raw_input_contents: one entry per input, in the order of `inputs`) or
    all typed (each input's `contents`), never mixed, as the protocol says."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequest(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if not name:
            raise InvalidRequest(f"input {index} has no name")
        if name in arrays:
            raise InvalidRequest(f"input {name!r} appears twice")
        typed = tensor.HasField("contents")
        if raw and typed and tensor.contents.ListFields():
            raise InvalidRequest(f"tensor {name!r}: has typed contents in a request that sends raw_input_contents")
        arrays[name] = decode_tensor(name, tensor.datatype, list(tensor.shape),
                                     raw=raw[index] if raw else None,
                                     contents=None if raw else (tensor.contents if typed else None))
    return arrays


def add_grpc_output(response: Any, name: str, array: np.ndarray) -> None:
    """Append `array` to a ModelInferResponse as output `name`, its bytes in raw_output_contents (the
    form tritonclient and perf_analyzer decode). Outputs and raw entries stay in step."""
    if len(response.raw_output_contents) != len(response.outputs):
        raise ValueError("every output of the response must have its raw_output_contents entry")
    datatype, shape, raw = encode_tensor(array)
    response.outputs.add(name=name, datatype=datatype, shape=shape)
    response.raw_output_contents.append(raw)
