"""Every contract message to bytes and back, so that a target can live in another process (DESIGN decision 3).

A compact tagged encoding derived from the dataclass fields: a message is its class tag (unsigned LEB128
varint) followed by its fields in declaration order. ints are zigzag varints, floats 8-byte little-endian
doubles, bytes and tuples a varint length then the items, ``X | None`` a presence byte, enums their index in
definition order (Status: its value), and a field typed as a union of classes a class tag. Decoding rebuilds
the frozen values, so every field is validated again on the receiving side.

The tag of a class is its position in ``_CLASSES``: never reorder, only append (the same holds for the enums).
"""

from __future__ import annotations

import dataclasses
import struct
import types
import typing
from collections.abc import Callable
from enum import Enum, IntEnum
from typing import Any

from tcpchimney.chimney import completions, indications, neighbor, path, requests, tcp_state, tree
from tcpchimney.chimney.errors import CodecError, ContractError
from tcpchimney.wire.seq import SeqNum

_CLASSES: tuple[type, ...] = (
    requests.InitiateOffload,
    requests.UpdateOffload,
    requests.InvalidateOffload,
    requests.QueryOffload,
    requests.TerminateOffload,
    requests.Send,
    requests.PostReceive,
    requests.Disconnect,
    requests.Forward,
    requests.ReturnReceive,
    requests.ReachabilityReply,
    completions.Completion,
    completions.StateCompletion,
    completions.SendCompletion,
    completions.ReceiveCompletion,
    completions.DisconnectCompletion,
    indications.ReceiveIndication,
    indications.PeerDisconnect,
    indications.PeerReset,
    indications.UploadRequest,
    indications.SendBacklogChanged,
    indications.NeighborReachabilityQuery,
    indications.TargetCapabilities,
    indications.TargetPaused,
    indications.TargetResumed,
    indications.UploadAllRequested,
    indications.LinkStatusChanged,
    tree.BlockList,
    neighbor.NeighborConst,
    neighbor.NeighborCached,
    neighbor.NeighborDelegated,
    neighbor.NeighborState,
    path.PathConst,
    path.PathCached,
    path.PathDelegated,
    path.PathState,
    tcp_state.TcpConst,
    tcp_state.TcpCached,
    tcp_state.TcpDelegated,
    tcp_state.TcpSnapshot,
)
_TAG: dict[type, int] = {cls: i for i, cls in enumerate(_CLASSES)}
MESSAGE_CLASSES: tuple[type, ...] = _CLASSES[:27]  # requests, completions, indications

_F64 = struct.Struct("<d")
_MAX_VARINT_BYTES = 10  # enough for 64 bits

Encoder = Callable[[Any, bytearray], None]
Decoder = Callable[["_Reader"], Any]


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.buf):
            raise CodecError("truncated message")
        chunk = self.buf[self.pos : end]
        self.pos = end
        return chunk

    def uvarint(self) -> int:
        value = shift = 0
        for _ in range(_MAX_VARINT_BYTES):
            if self.pos >= len(self.buf):
                raise CodecError("truncated varint")
            byte = self.buf[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
        raise CodecError("varint longer than 64 bits")


def _put_uvarint(value: int, out: bytearray) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _enc_int(value: int, out: bytearray) -> None:
    _put_uvarint(value << 1 if value >= 0 else ((-value) << 1) - 1, out)


def _dec_int(r: _Reader) -> int:
    z = r.uvarint()
    return z >> 1 if not z & 1 else -((z + 1) >> 1)


def _enc_bool(value: bool, out: bytearray) -> None:
    out.append(1 if value else 0)


def _dec_bool(r: _Reader) -> bool:
    byte = r.take(1)[0]
    if byte > 1:
        raise CodecError(f"bad bool byte {byte}")
    return byte == 1


def _enc_float(value: float, out: bytearray) -> None:
    out += _F64.pack(value)


def _dec_float(r: _Reader) -> float:
    return float(_F64.unpack(r.take(8))[0])


def _enc_bytes(value: bytes, out: bytearray) -> None:
    _put_uvarint(len(value), out)
    out += value


def _dec_bytes(r: _Reader) -> bytes:
    return bytes(r.take(r.uvarint()))


def _enc_seq(value: SeqNum, out: bytearray) -> None:
    _put_uvarint(int(value), out)  # int(): SeqNum comparisons are modular, the varint loop needs plain ones


def _dec_seq(r: _Reader) -> SeqNum:
    value = r.uvarint()
    if value > 0xFFFF_FFFF:
        raise CodecError("sequence number above 32 bits")
    return SeqNum(value)


def _enum_codec(cls: type[Enum]) -> tuple[Encoder, Decoder]:
    if issubclass(cls, IntEnum):
        members_by_value = {m.value: m for m in cls}

        def enc_int_enum(value: IntEnum, out: bytearray) -> None:
            _put_uvarint(value.value, out)

        def dec_int_enum(r: _Reader) -> Enum:
            code = r.uvarint()
            if code not in members_by_value:
                raise CodecError(f"unknown {cls.__name__} value {code}")
            return members_by_value[code]

        return enc_int_enum, dec_int_enum
    members = list(cls)
    index = {m: i for i, m in enumerate(members)}

    def enc_enum(value: Enum, out: bytearray) -> None:
        _put_uvarint(index[value], out)

    def dec_enum(r: _Reader) -> Enum:
        code = r.uvarint()
        if code >= len(members):
            raise CodecError(f"unknown {cls.__name__} index {code}")
        return members[code]

    return enc_enum, dec_enum


def _optional(codec: tuple[Encoder, Decoder]) -> tuple[Encoder, Decoder]:
    enc, dec = codec

    def enc_opt(value: Any, out: bytearray) -> None:
        if value is None:
            out.append(0)
        else:
            out.append(1)
            enc(value, out)

    def dec_opt(r: _Reader) -> Any:
        return dec(r) if _dec_bool(r) else None

    return enc_opt, dec_opt


def _tuple_of(codec: tuple[Encoder, Decoder]) -> tuple[Encoder, Decoder]:
    enc, dec = codec

    def enc_tuple(value: tuple[Any, ...], out: bytearray) -> None:
        _put_uvarint(len(value), out)
        for item in value:
            enc(item, out)

    def dec_tuple(r: _Reader) -> tuple[Any, ...]:
        count = r.uvarint()
        if count > len(r.buf) - r.pos:  # every item takes at least one byte: refuse absurd counts early
            raise CodecError("tuple longer than the message")
        return tuple(dec(r) for _ in range(count))

    return enc_tuple, dec_tuple


def _tagged(allowed: frozenset[type]) -> tuple[Encoder, Decoder]:
    """A value of one of several dataclasses: its class tag, then its fields."""

    def enc_tagged(value: Any, out: bytearray) -> None:
        if type(value) not in allowed:
            raise CodecError(f"cannot encode {type(value).__name__} here")
        _encode_value(value, out)

    def dec_tagged(r: _Reader) -> Any:
        tag = r.uvarint()
        if tag >= len(_CLASSES) or _CLASSES[tag] not in allowed:
            raise CodecError(f"unexpected class tag {tag}")
        return _FIELDS[_CLASSES[tag]][1](r)

    return enc_tagged, dec_tagged


_SCALARS: dict[Any, tuple[Encoder, Decoder]] = {
    int: (_enc_int, _dec_int),
    bool: (_enc_bool, _dec_bool),
    float: (_enc_float, _dec_float),
    bytes: (_enc_bytes, _dec_bytes),
    SeqNum: (_enc_seq, _dec_seq),
}


def _codec_for(hint: Any) -> tuple[Encoder, Decoder]:
    if hint in _SCALARS:
        return _SCALARS[hint]
    if isinstance(hint, type) and issubclass(hint, Enum):
        return _enum_codec(hint)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _tuple_of(_codec_for(args[0]))
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        optional = len(members) < len(args)
        if len(members) == 1:
            inner = _codec_for(members[0])
        elif all(m in _TAG for m in members):
            inner = _tagged(frozenset(members))
        else:
            raise TypeError(f"codec: unsupported union {hint}")
        return _optional(inner) if optional else inner
    if hint in _TAG:
        return _tagged(frozenset({hint}))
    raise TypeError(f"codec: unsupported field type {hint}")


def _class_codec(cls: type) -> tuple[Encoder, Decoder]:
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    codecs = [_codec_for(hints[name]) for name in fields]
    pairs = list(zip(fields, codecs, strict=True))

    def enc_fields(value: Any, out: bytearray) -> None:
        for name, (enc, _) in pairs:
            enc(getattr(value, name), out)

    def dec_fields(r: _Reader) -> Any:
        kwargs = {name: dec(r) for name, (_, dec) in pairs}
        try:
            return cls(**kwargs)
        except ContractError as exc:
            raise CodecError(f"decoded {cls.__name__} is invalid: {exc}") from exc

    return enc_fields, dec_fields


_FIELDS: dict[type, tuple[Encoder, Decoder]] = {}
for _cls in _CLASSES:  # placeholders first: classes refer to each other (BlockList to itself)
    _FIELDS[_cls] = (lambda v, o: None, lambda r: None)
for _cls in _CLASSES:
    _FIELDS[_cls] = _class_codec(_cls)


def _encode_value(value: Any, out: bytearray) -> None:
    _put_uvarint(_TAG[type(value)], out)
    _FIELDS[type(value)][0](value, out)


def encode(message: Any) -> bytes:
    """The bytes of one request, completion or indication."""
    if type(message) not in _TAG or type(message) not in MESSAGE_CLASSES:
        raise CodecError(f"not a contract message: {type(message).__name__}")
    out = bytearray()
    try:
        _encode_value(message, out)
    except (TypeError, KeyError, AttributeError, struct.error) as exc:
        raise CodecError(f"cannot encode {type(message).__name__}: {exc}") from exc
    return bytes(out)


def decode(data: bytes | bytearray | memoryview) -> Any:
    """The message encoded in ``data`` (exactly one; trailing bytes are an error). Raises CodecError."""
    r = _Reader(memoryview(data).cast("B"))
    tag = r.uvarint()
    if tag >= len(MESSAGE_CLASSES):
        raise CodecError(f"unknown message tag {tag}")
    try:
        message = _FIELDS[_CLASSES[tag]][1](r)
    except CodecError:
        raise
    except (ValueError, TypeError, OverflowError, IndexError) as exc:
        raise CodecError(f"malformed {_CLASSES[tag].__name__}: {exc}") from exc
    if r.pos != len(r.buf):
        raise CodecError(f"{len(r.buf) - r.pos} trailing bytes after {_CLASSES[tag].__name__}")
    return message
