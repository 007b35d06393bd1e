"""Answers with packed images as wire bytes: protobuf serializes the small fields, we append the big ones.

Through protobuf, 6.4 MB of samples (N = 8192, uint8) were copied four times while holding the GIL: numpy
to `bytes`, `bytes` into the message, the message out to its serialization, and gRPC's own copy. Built here
they are copied once, from the decoder's array into the answer (gRPC still makes its copy). Protobuf's wire
format allows this: a message is its fields' records in any order, and a length-delimited record is
tag, varint length, raw bytes (https://protobuf.dev/programming-guides/encoding/#structure). Field numbers
come from the generated descriptors, so the .proto stays the single source of truth.

The gRPC method handlers get `serialize_response` as their serializer: it passes such bytes through and
serializes any other answer (a message) as usual.
"""

from __future__ import annotations

import functools

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

_LENGTH_DELIMITED = 2  # wire type of bytes, strings and embedded messages
_ONE_BYTE = tuple(bytes((i,)) for i in range(0x80))


def encode_varint(value: int) -> bytes:
    """Base-128 varint, least significant group first (the encoding of tags and lengths)."""
    if value < 0x80:
        if value < 0:
            raise ValueError(f"a varint length or tag is non-negative, got {value}")
        return _ONE_BYTE[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@functools.cache
def bytes_field_tag(message: type[Message], name: str, repeated: bool = False) -> bytes:
    """The record tag of `message`'s bytes field `name`: varint(field number << 3 | wire type 2)."""
    field = message.DESCRIPTOR.fields_by_name[name]
    if field.type != FieldDescriptor.TYPE_BYTES or field.is_repeated != repeated:
        kind = "repeated" if repeated else "singular"
        raise TypeError(f"{message.DESCRIPTOR.full_name}.{name} is not a {kind} bytes field")
    return encode_varint(field.number << 3 | _LENGTH_DELIMITED)


def with_bytes_fields(head: Message, **payloads: np.ndarray | bytes) -> bytes:
    """`head` serialized, then each payload as the bytes field of that name: one copy of each payload.

    Payloads must be C-contiguous; an array's raw memory is what goes on the wire (little-endian here, as
    the API promises). An empty payload is left out, as protobuf leaves out an empty proto3 field. `head`
    must leave these fields empty: a parser keeps the last record of a singular field, so ours would win
    silently."""
    for name in payloads:
        if getattr(head, name):
            raise ValueError(f"{head.DESCRIPTOR.full_name}.{name} is set in the head and given as a payload")
    return append_bytes_fields(type(head), [head.SerializeToString()], payloads)


def append_bytes_fields(message: type[Message], parts: list[bytes], payloads: dict[str, np.ndarray | bytes]
                        ) -> bytes:
    """`parts` (serialized records of `message`, none of them the payloads' fields) joined with each payload
    as the bytes field of that name, copied once; an empty payload is left out."""
    for name, payload in payloads.items():
        view = memoryview(payload)
        if view.nbytes:
            # cast raises for a non-contiguous array, which would need a copy first
            parts += (bytes_field_tag(message, name), encode_varint(view.nbytes), view.cast("B"))
    return b"".join(parts)


def append_repeated_bytes(message: type[Message], parts: list[bytes], name: str,
                          payloads: list[np.ndarray | bytes]) -> bytes:
    """`parts` (serialized records of `message`, none of them field `name`'s) joined with each payload as one
    more element of its repeated bytes field `name`, each copied once.

    For the Open Inference Protocol's raw_output_contents: element i is output i's raw bytes, in order."""
    tag = bytes_field_tag(message, name, repeated=True)
    for payload in payloads:
        view = memoryview(payload)
        parts += (tag, encode_varint(view.nbytes), view.cast("B"))  # an empty element is still an element
    return b"".join(parts)


def serialize_response(response: Message | bytes) -> bytes:
    """The response serializer of our gRPC methods: wire bytes pass through, messages serialize."""
    if isinstance(response, bytes):
        return response
    return response.SerializeToString()
