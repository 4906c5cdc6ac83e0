"""IPv4 (RFC 791) and ICMP (RFC 792, RFC 1191)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire_fixtures import ICMP_FRAG_NEEDED, LINUX_SYN

from tcpchimney.wire import icmp, ipv4
from tcpchimney.wire.checksum import ones_sum
from tcpchimney.wire.errors import ChecksumError, EmitError, Illegal, Malformed, Truncated

addrs = st.binary(min_size=4, max_size=4)
raw_options = st.sampled_from(
    [
        b"",
        b"\x01\x01\x01\x00",
        b"\x94\x04\x00\x00",
        b"\x07\x07\x04\x00\x00\x00\x00\x00",
        b"\x01\x94\x04\x00\x00\x00\x00\x00",
    ]
)


def test_parse_linux_syn_datagram() -> None:
    ip = ipv4.parse_ipv4(LINUX_SYN, 14)
    assert (ip.src, ip.dst) == (ipv4.addr_from_str("198.18.0.1"), ipv4.addr_from_str("198.18.0.2"))
    assert ip.proto == ipv4.PROTO_TCP and ip.ttl == 64 and ip.ident == 0x1C46
    assert ip.total_len == 60 and ip.header_len == 20 and ip.checksum == 0x924E
    assert ip.dont_fragment and not ip.more_fragments and not ip.is_fragment and ip.frag_offset == 0
    assert not ip.reserved_flag and ip.dscp == 0 and ip.ecn == 0
    assert isinstance(ip.payload, memoryview) and bytes(ip.payload) == LINUX_SYN[34:]
    again = ipv4.emit_ipv4(ip.src, ip.dst, ip.proto, len(ip.payload), ip.ident, ip.ttl, ip.tos, ip.flags_frag)
    assert again == LINUX_SYN[14:34]
    tmpl = ipv4.Ipv4HeaderTemplate(ip.src, ip.dst, ipv4.PROTO_TCP, ttl=64, df=True)
    assert tmpl.header(60, 0x1C46) == LINUX_SYN[14:34]


@given(addrs, addrs, st.integers(0, 255), st.integers(0, 1500), st.integers(0, 0xFFFF), st.integers(0, 255),
       st.integers(0, 255), st.integers(0, 0xFFFF), raw_options, st.binary(max_size=10))  # fmt: skip
def test_round_trip(
    src: bytes,
    dst: bytes,
    proto: int,
    plen: int,
    ident: int,
    ttl: int,
    tos: int,
    ff: int,
    opts: bytes,
    pad: bytes,
) -> None:
    payload = bytes(range(256)) * 6
    payload = payload[:plen]
    dgram = ipv4.emit_ipv4(src, dst, proto, plen, ident, ttl, tos, ff, opts) + payload
    ip = ipv4.parse_ipv4(dgram + pad)  # link padding after the datagram is ignored
    assert (ip.src, ip.dst, ip.proto, ip.ident, ip.ttl, ip.tos, ip.flags_frag) == (
        src,
        dst,
        proto,
        ident,
        ttl,
        tos,
        ff,
    )
    assert ip.header_len == 20 + len(opts) and ip.total_len == len(dgram) and ip.options_raw == opts
    assert bytes(ip.payload) == payload
    assert ip.is_fragment == bool(ff & 0x3FFF) and ip.frag_offset == (ff & 0x1FFF) * 8
    assert (
        ipv4.emit_ipv4(src, dst, proto, plen, ident, ttl, tos, ff, ip.options_raw) == dgram[: ip.header_len]
    )


@given(addrs, addrs, st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.booleans(),
       st.integers(20, 65535), st.integers(0, 0xFFFF))  # fmt: skip
def test_template_matches_emit(
    src: bytes, dst: bytes, proto: int, ttl: int, tos: int, df: bool, total: int, ident: int
) -> None:
    tmpl = ipv4.Ipv4HeaderTemplate(src, dst, proto, ttl, tos, df)
    expected = ipv4.emit_ipv4(src, dst, proto, total - 20, ident, ttl, tos, ipv4.FLAG_DF if df else 0)
    assert tmpl.header(total, ident) == expected
    assert ones_sum(expected) == 0xFFFF


def test_options_parsed_and_encoded() -> None:
    raw = ipv4.encode_options(
        ((ipv4.OPT_RA, b"\x00\x00"), (ipv4.OPT_NOP, b""), (ipv4.OPT_RR, b"\x04" + bytes(4)))
    )
    assert raw == b"\x94\x04\x00\x00\x01\x07\x07\x04\x00\x00\x00\x00"
    hdr = ipv4.emit_ipv4(b"\x01" * 4, b"\x02" * 4, 6, 0, 1, options_raw=raw)
    ip = ipv4.parse_ipv4(hdr)
    assert ip.options == ((ipv4.OPT_RA, b"\x00\x00"), (ipv4.OPT_RR, b"\x04" + bytes(4)))
    with pytest.raises(EmitError):
        ipv4.encode_options(((ipv4.OPT_RR, bytes(40)),))
    with pytest.raises(EmitError):
        ipv4.emit_ipv4(b"\x01" * 4, b"\x02" * 4, 6, 0, 1, options_raw=b"\x01")
    with pytest.raises(EmitError):
        ipv4.emit_ipv4(b"\x01" * 4, b"\x02" * 4, 6, 65516, 1)


def _with_checksum(hdr: bytearray) -> bytearray:
    hdr[10:12] = b"\x00\x00"
    hdr[10:12] = (~ones_sum(hdr) & 0xFFFF).to_bytes(2, "big")
    return hdr


def _syn_ip(**patch: int) -> bytearray:
    dgram = bytearray(LINUX_SYN[14:])
    for offset, value in patch.items():
        dgram[int(offset[1:])] = value
    return dgram


@pytest.mark.parametrize(
    ("patch", "exc", "reason"),
    [({"b0": 0x65}, Illegal, "bad_version"), ({"b0": 0x44}, Malformed, "bad_header_length"),
     ({"b2": 0, "b3": 19}, Malformed, "bad_total_length"), ({"b2": 0, "b3": 61}, Truncated, "truncated"),
     ({"b0": 0x46, "b20": 0x07, "b21": 9}, Malformed, "bad_options")],
)  # fmt: skip
def test_errors(patch: dict[str, int], exc: type[Exception], reason: str) -> None:
    hdr = _syn_ip(**patch)
    hlen = (hdr[0] & 15) * 4
    hdr[: max(20, min(hlen, len(hdr)))] = _with_checksum(hdr[: max(20, min(hlen, len(hdr)))])
    with pytest.raises(exc) as err:
        ipv4.parse_ipv4(bytes(hdr))
    assert getattr(err.value, "reason", None) == reason


def test_checksum_and_truncation() -> None:
    dgram = bytearray(LINUX_SYN[14:])
    dgram[8] = 63  # TTL changed without fixing the checksum
    with pytest.raises(ChecksumError):
        ipv4.parse_ipv4(dgram)
    assert ipv4.parse_ipv4(dgram, verify_checksum=False).ttl == 63
    with pytest.raises(Truncated):
        ipv4.parse_ipv4(LINUX_SYN[14:33])
    with pytest.raises(Truncated):
        ipv4.parse_ipv4(LINUX_SYN[:-4], 14)  # total length 60 beyond what is left


def test_address_helpers() -> None:
    a = ipv4.addr_from_str("198.18.0.255")
    assert a == b"\xc6\x12\x00\xff" and ipv4.addr_to_str(a) == "198.18.0.255"
    assert ipv4.addr_from_int(ipv4.addr_to_int(a)) == a
    with pytest.raises(ValueError):
        ipv4.addr_from_str("198.18.0")
    with pytest.raises(EmitError):
        ipv4.Ipv4HeaderTemplate(b"\x01", b"\x02" * 4, 6)


# --- ICMP --------------------------------------------------------------------------------------------


def test_parse_frag_needed_fixture() -> None:
    ip = ipv4.parse_ipv4(ICMP_FRAG_NEEDED, 14)
    msg = icmp.parse_icmp(ip.payload)
    assert msg.type == icmp.ICMP_DEST_UNREACHABLE and msg.code == icmp.UNREACH_FRAG_NEEDED
    assert msg.next_hop_mtu == 1400 and msg.is_error
    quoted = msg.quoted_header()
    assert quoted.src == ipv4.addr_from_str("198.18.0.1") and quoted.dst == ipv4.addr_from_str("198.19.5.9")
    assert quoted.proto == ipv4.PROTO_TCP and quoted.total_len == 40 and quoted.dont_fragment
    assert bytes(quoted.payload) == bytes.fromhex("b26e005000000001")  # ports 45678 -> 80, seq 1
    assert icmp.emit_dest_unreachable(4, msg.data, next_hop_mtu=1400) == bytes(ip.payload)


@given(st.booleans(), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=300))
def test_echo_round_trip(request: bool, ident: int, seq: int, data: bytes) -> None:
    emit = icmp.emit_echo_request if request else icmp.emit_echo_reply
    raw = emit(ident, seq, data)
    assert ones_sum(raw) == 0xFFFF
    msg = icmp.parse_icmp(raw)
    assert msg.type == (icmp.ICMP_ECHO_REQUEST if request else icmp.ICMP_ECHO_REPLY) and msg.code == 0
    assert (msg.ident, msg.seq, bytes(msg.data)) == (ident, seq, data) and not msg.is_error


@given(st.integers(0, 15), st.integers(0, 0xFFFF), st.binary(min_size=20, max_size=60))
def test_unreachable_round_trip(code: int, mtu: int, tail: bytes) -> None:
    dgram = ipv4.emit_ipv4(b"\xc6\x12\x00\x01", b"\xc6\x12\x00\x02", 6, len(tail), 9) + tail
    quote = icmp.quote_of(dgram)
    assert quote == dgram[:28]
    raw = icmp.emit_dest_unreachable(code, quote, mtu if code == 4 else 0)
    msg = icmp.parse_icmp(raw)
    assert (msg.type, msg.code, bytes(msg.data)) == (3, code, quote)
    assert msg.next_hop_mtu == (mtu if code == 4 else 0)
    assert msg.quoted_header().ident == 9


def test_time_exceeded_and_parameter_problem() -> None:
    quote = LINUX_SYN[14:42]
    for code in (icmp.TIME_EXCEEDED_TTL, icmp.TIME_EXCEEDED_REASSEMBLY):
        msg = icmp.parse_icmp(icmp.emit_time_exceeded(code, quote))
        assert (msg.type, msg.code, bytes(msg.data)) == (icmp.ICMP_TIME_EXCEEDED, code, quote)
    msg = icmp.parse_icmp(icmp.emit_parameter_problem(9, quote))
    assert msg.type == icmp.ICMP_PARAMETER_PROBLEM and msg.pointer == 9


def test_icmp_errors() -> None:
    raw = bytearray(icmp.emit_echo_request(1, 2, b"abc"))
    with pytest.raises(Truncated):
        icmp.parse_icmp(raw[:7])
    raw[-1] ^= 1
    with pytest.raises(ChecksumError):
        icmp.parse_icmp(raw)
    assert bytes(icmp.parse_icmp(raw, verify_checksum=False).data) == b"abb"
    with pytest.raises(EmitError):
        icmp.emit_dest_unreachable(16, b"")
    with pytest.raises(EmitError):
        icmp.emit_dest_unreachable(3, b"", next_hop_mtu=1400)
    with pytest.raises(EmitError):
        icmp.emit_time_exceeded(2, b"")
    with pytest.raises(EmitError):
        icmp.quote_of(b"\x45" * 10)
    short = icmp.parse_icmp(icmp.emit_dest_unreachable(3, LINUX_SYN[14:30]))
    with pytest.raises(Truncated):
        short.quoted_header()
    bad = icmp.parse_icmp(icmp.emit_dest_unreachable(3, b"\x65" + LINUX_SYN[15:42]))
    with pytest.raises(Malformed):
        bad.quoted_header()
