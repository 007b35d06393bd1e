"""Hypothesis strategies built from protobuf descriptors: structure-aware inputs for every gRPC method.

`message(descriptor, hints)` draws a message of that type field by field from its descriptor: every scalar
type has its extremes (0, −1, 2³¹−1, 2⁶³−1, NaN, ±inf, −0.0, huge strings, enum numbers no enum has),
repeated fields have zero, a few or hundreds of elements, nested messages recurse a few levels, maps get
odd keys. `hints` maps a field name to a strategy of plausible values (or to {field type: strategy}
when fields of one name differ in type) (real model names, datatypes,
shapes with −1 or 2⁴⁰ elements...), drawn about half the time, so that inputs also get past the first check
and reach the codec and the core. `payload(...)` then turns a message into bytes as sent: serialized,
truncated, with bytes flipped, with garbage appended, or replaced by random bytes.
"""

from __future__ import annotations

import math
import struct

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

INT32 = (0, 1, -1, 2**31 - 1, -(2**31), 7, 64)
INT64 = (*INT32, 2**32, 2**63 - 1, -(2**63), 2**53 + 1)
UINT32 = (0, 1, 2**31 - 1, 2**32 - 1, 7, 64)
UINT64 = (*UINT32, 2**63 - 1, 2**64 - 1)
FLOATS = (0.0, -0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, 1e-45, 3.4e38, 1e300, -1e300)
HUGE_TEXT = "ä" * 100_000  # 200 kB of UTF-8
# Dimensions of shapes: negative, zero, the protocol's "any" (-1), beyond every limit, and plausible ones.
DIMS = (-1, 0, 1, 2, 8, 28, 64, 784, 2**31 - 1, 2**40, -(2**63), 2**63 - 1)

MAX_BYTES = 3 << 20  # requests are cut to this (past the fuzzed server's own limit: 2.6 MB)
T = FieldDescriptor


def _ints(low: int, high: int, extremes: tuple[int, ...]) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from([v for v in extremes if low <= v <= high]), st.integers(low, high))


def _float32(value: float) -> float:
    """`value` as float32 holds it (huge values become ±inf, as protobuf would store them)."""
    try:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


SCALARS: dict[int, st.SearchStrategy] = {
    T.TYPE_INT32: _ints(-(2**31), 2**31 - 1, INT32),
    T.TYPE_SINT32: _ints(-(2**31), 2**31 - 1, INT32),
    T.TYPE_SFIXED32: _ints(-(2**31), 2**31 - 1, INT32),
    T.TYPE_INT64: _ints(-(2**63), 2**63 - 1, INT64),
    T.TYPE_SINT64: _ints(-(2**63), 2**63 - 1, INT64),
    T.TYPE_SFIXED64: _ints(-(2**63), 2**63 - 1, INT64),
    T.TYPE_UINT32: _ints(0, 2**32 - 1, UINT32),
    T.TYPE_FIXED32: _ints(0, 2**32 - 1, UINT32),
    T.TYPE_UINT64: _ints(0, 2**64 - 1, UINT64),
    T.TYPE_FIXED64: _ints(0, 2**64 - 1, UINT64),
    T.TYPE_BOOL: st.booleans(),
    T.TYPE_DOUBLE: st.one_of(st.sampled_from(FLOATS), st.floats()),
    T.TYPE_FLOAT: st.one_of(st.sampled_from(FLOATS), st.floats(width=32)).map(_float32),
    T.TYPE_STRING: st.one_of(st.sampled_from(["", "a", "digits-vae", "..", "/", "\x00", HUGE_TEXT]),
                             st.text(max_size=40)),
    T.TYPE_BYTES: st.one_of(st.sampled_from([b"", b"\x00", b"\xff" * 3, bytes(784), bytes(1 << 20)]),
                            st.binary(max_size=64)),
}


def field_values(field: FieldDescriptor, hints: dict, depth: int) -> st.SearchStrategy:
    """One value of a singular field."""
    if field.type == T.TYPE_MESSAGE:
        return message(field.message_type, hints, depth + 1)
    if field.type == T.TYPE_ENUM:  # every number, including those the enum does not have
        numbers = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(numbers), _ints(-(2**31), 2**31 - 1, (*INT32, max(numbers) + 1)))
    return SCALARS[field.type]


def _repeated(field: FieldDescriptor, values: st.SearchStrategy) -> st.SearchStrategy[list]:
    few = st.lists(values, max_size=4)
    if field.type in (T.TYPE_BYTES, T.TYPE_STRING):
        return few
    # One element hundreds of times (drawing hundreds each time would be slow).
    many = st.tuples(values, st.sampled_from([100, 300] if field.type == T.TYPE_MESSAGE else [100, 1000])).map(lambda t: [t[0]] * t[1])
    return st.one_of(few, many)


def _map_entries(field: FieldDescriptor, hints: dict, depth: int) -> st.SearchStrategy[dict]:
    entry = field.message_type
    keys = hints.get(field.name + ".key", SCALARS[entry.fields_by_name["key"].type])
    return st.dictionaries(keys, field_values(entry.fields_by_name["value"], hints, depth), max_size=3)


def _field_strategy(field: FieldDescriptor, hints: dict, depth: int) -> tuple[str, st.SearchStrategy]:
    """(how to set it, a strategy of what to set) for one field."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return "map", _map_entries(field, hints, depth)
    hint = hints.get(field.name)
    if isinstance(hint, dict):  # one strategy per field type
        hint = hint.get(field.type)
    values = field_values(field, hints, depth)
    if field.is_repeated:  # a hint of a repeated field is a strategy of lists
        lists = _repeated(field, values)
        return ("messages" if field.type == T.TYPE_MESSAGE else "extend"), (
            lists if hint is None else st.one_of(hint, lists))
    chosen = values if hint is None else st.one_of(hint, values)
    return ("message" if field.type == T.TYPE_MESSAGE else "set"), chosen


_CACHE: dict[tuple[str, int, int, float], st.SearchStrategy] = {}


def message(descriptor: Descriptor, hints: dict | None = None, depth: int = 0, *,
            presence: float = 0.5) -> st.SearchStrategy:
    """Messages of type `descriptor` (see the module's docstring), each top-level field set with
    probability `presence`; built once per type, depth, hints and presence."""
    hints = hints or {}
    key = (descriptor.full_name, depth, id(hints), presence)
    if key not in _CACHE:
        cls = message_factory.GetMessageClass(descriptor)
        fields = [] if depth > 3 else [(f, *_field_strategy(f, hints, depth)) for f in descriptor.fields]
        tenths = round(presence * 10)
        _CACHE[key] = st.composite(lambda draw: _draw_message(draw, cls, fields, tenths))()
    return _CACHE[key]


def mutated(templates: list, hints: dict | None = None) -> st.SearchStrategy:
    """A valid template with a few of its fields replaced or extended by drawn ones (merged in): inputs
    that pass most checks and fail, or not, at one."""
    changes = message(templates[0].DESCRIPTOR, hints, presence=0.15)

    @st.composite
    def draw_one(draw):
        out = type(templates[0])()
        out.CopyFrom(draw(st.sampled_from(templates)))
        if draw(st.integers(0, 3)):
            out.MergeFrom(draw(changes))
        return out

    return draw_one()


def _draw_message(draw, cls: type, fields: list, tenths: int) -> object:
    out = cls()
    for field, how, values in fields:
        if draw(st.integers(0, 9)) >= tenths:
            continue
        drawn = draw(values)
        target = getattr(out, field.name) if how != "set" else None
        if how == "set":
            setattr(out, field.name, drawn)
        elif how == "message":
            target.CopyFrom(drawn)
        elif how == "extend":
            target.extend(drawn)
        elif how == "messages":
            for item in drawn:
                target.add().CopyFrom(item)
        else:  # map
            for k, v in drawn.items():
                if field.message_type.fields_by_name["value"].type == T.TYPE_MESSAGE:
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
    return out


# ------------------------------------------------------------------------------------------ the wire


@st.composite
def payload(draw, messages: st.SearchStrategy) -> tuple[str, bytes]:
    """(how it was made, the request's bytes): mostly serialized messages, the rest damaged or random."""
    how = draw(st.sampled_from(["message"] * 6 + ["truncated", "flipped", "appended", "random", "varint"]))
    if how == "random":
        return how, draw(st.binary(min_size=1, max_size=200))
    if how == "varint":  # a field record announcing far more bytes than follow
        return how, bytes([draw(st.integers(1, 15)) << 3 | 2]) + b"\xff\xff\xff\xff\x0f" + b"x"
    data = draw(messages).SerializeToString(deterministic=True)  # map entries in key order: reproducible
    if len(data) > MAX_BYTES:  # hundreds of megabyte-sized elements: keep the start
        return "truncated", data[:MAX_BYTES]
    if how == "message" or not data:
        return "message", data
    if how == "truncated":
        return how, data[:draw(st.integers(0, len(data) - 1))]
    if how == "flipped":
        mutable = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(mutable) - 1))
            mutable[at] ^= draw(st.integers(1, 255))
        return how, bytes(mutable)
    return how, data + draw(st.binary(min_size=1, max_size=16))
