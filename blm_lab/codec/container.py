"""The compressed-file container: the one place that knows its byte layout, and the checks that make a
hostile or damaged file fail cleanly before any work.

Layout, version 2 (integers little-endian; ``varint`` is unsigned LEB128, ``str8`` a u8 length then
UTF-8 bytes)::

    magic            4 bytes   b"BLMZ"
    version          u8        FORMAT_VERSION (2)
    mode             u8        0 = coded by a model, 1 = stored (the original bytes follow the header)
    original_length  varint
    checksum         8 bytes   first 8 bytes of sha256(original)
    -- mode 0 only --
    numerics         u8        0 = portable (bit-exact everywhere), 1 = float (needs the same setting),
                               2 = none (no model: context mixing alone)
    mixing           u8        0 = none (the model's byte distributions are coded directly),
                               1 = cm (``codec.mixing``: bits coded with context mixing)
    precision        u8        the coder's frequency precision (totals are 2**precision)
    model_fp         16 bytes  the model's fingerprint (portable: its integer weights and tables; zeros: none)
    mixer_fp         4 bytes   mixing cm only: the mixer's configuration and tables (``MixerConfig.fingerprint``)
    n_setting        varint    float numerics: the compute setting as (str8 key, str8 value) pairs
    setting          n_setting pairs
    segment_bytes    varint    original bytes per segment (the last may be shorter)
    n_segments       varint    = ceil(original_length / segment_bytes)
    segment_table    n_segments varints: stream_length << 1 | stored (a stored segment's stream is its bytes)
    -- both modes --
    header_crc       u32       crc32 of every header byte above
    payload          mode 0: the streams, concatenated in segment order; mode 1: the original bytes

Stored mode is what ``compress`` writes when coding would not make the file smaller: its size is the
input plus ``stored_overhead(n)`` bytes (18 + the varint of n: at most 23 for inputs under 32 GiB).
A reader checks, in order and before allocating anything: magic, version (version 1, blm_lab 0.1, is
refused by name), the header's crc32, that every length is consistent (segments cover the original
exactly, stored segments hold their own length, the streams fill the payload exactly), that no
coded segment claims more bytes than its stream could possibly hold, and that the output fits
``max_output_bytes``. The model, the setting and the checksum are the decompressor's to check.
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib
from dataclasses import dataclass, field

from ..errors import ContainerError

MAGIC = b"BLMZ"
FORMAT_VERSION = 2
MODE_CODED, MODE_STORED = 0, 1
NUMERICS = ("portable", "float", "none")  # the numerics byte indexes this ("none": no model)
MIXING = ("none", "cm")  # the mixing byte indexes this
MIXER_FINGERPRINT_BYTES = 4
MAX_OUTPUT_BYTES = 1 << 32  # the default cap on what a file may claim to decode to
CHECKSUM_BYTES = 8
FINGERPRINT_BYTES = 16


@dataclass
class Header:
    original_length: int
    checksum: bytes  # CHECKSUM_BYTES
    stored: bool = False  # mode 1: the payload is the original
    numerics: str = "portable"
    mixing: str = "none"
    precision: int = 24
    model_fingerprint: bytes = bytes(FINGERPRINT_BYTES)
    mixer_fingerprint: bytes = b""  # MIXER_FINGERPRINT_BYTES with mixing "cm"
    setting: dict[str, str] = field(default_factory=dict)  # float numerics only
    segment_bytes: int = 1
    stream_lengths: list[int] = field(default_factory=list)
    stored_segments: list[bool] = field(default_factory=list)

    @property
    def n_segments(self) -> int:
        return len(self.stream_lengths)

    def segment_lengths(self) -> list[int]:
        """Original bytes in each segment: all segment_bytes long but the last."""
        n, s = self.original_length, self.segment_bytes
        return [min(s, n - i * s) for i in range(self.n_segments)]


def checksum(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:CHECKSUM_BYTES]


def stored_overhead(n: int) -> int:
    """Bytes a stored (mode 1) container adds to an n-byte input: magic, version, mode, length, checksum, crc."""
    return len(MAGIC) + 2 + len(_varint(n)) + CHECKSUM_BYTES + 4


def max_bytes(stream_bytes: int, header: "Header") -> int:
    """The most original bytes a coded stream of ``stream_bytes`` can hold: every coded symbol (a byte,
    or with mixing one of its 8 bits) costs at least -log2((2**precision - V + 1) / 2**precision) bits,
    V its number of values (every frequency is >= 1), and the encoder's output is at least the cost of
    what it coded minus 64 bits (its final interval)."""
    values, per_byte = (2, 8) if header.mixing != "none" else (256, 1)
    least_bits = -math.log2((2**header.precision - values + 1) / 2**header.precision)
    return int((8 * stream_bytes + 64) / least_bits) // per_byte + 1


def _varint(value: int) -> bytes:
    assert value >= 0, value
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _str8(text: str) -> bytes:
    raw = text.encode("utf-8")[:255]
    return bytes([len(raw)]) + raw


class _Reader:
    def __init__(self, blob: bytes):
        self.blob, self.pos = blob, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.blob):
            raise ContainerError("the file is truncated: its header ends early; the file was cut short or is not complete")
        out = self.blob[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise ContainerError("the header is corrupted: an integer field is malformed")

    def str8(self) -> str:
        return self.take(self.u8()).decode("utf-8", errors="replace")


def pack(header: Header, payload_parts: list[bytes]) -> bytes:
    """The container bytes: ``payload_parts`` are the streams (or, stored, the original as one part)."""
    head = bytearray(MAGIC)
    head += bytes([FORMAT_VERSION, MODE_STORED if header.stored else MODE_CODED])
    head += _varint(header.original_length) + header.checksum
    if not header.stored:
        assert len(payload_parts) == header.n_segments == len(header.stored_segments)
        assert all(len(s) == n for s, n in zip(payload_parts, header.stream_lengths))
        assert len(header.model_fingerprint) == FINGERPRINT_BYTES
        head += bytes([NUMERICS.index(header.numerics), MIXING.index(header.mixing), header.precision])
        head += header.model_fingerprint
        if header.mixing != "none":
            assert len(header.mixer_fingerprint) == MIXER_FINGERPRINT_BYTES
            head += header.mixer_fingerprint
        head += _varint(len(header.setting))
        for key, value in header.setting.items():
            head += _str8(key) + _str8(value)
        head += _varint(header.segment_bytes) + _varint(header.n_segments)
        for n, stored in zip(header.stream_lengths, header.stored_segments):
            head += _varint(n << 1 | int(stored))
    head += struct.pack("<I", zlib.crc32(head))
    return bytes(head) + b"".join(payload_parts)


def unpack(blob: bytes, max_output_bytes: int = MAX_OUTPUT_BYTES) -> tuple[Header, list[bytes]]:
    """Parse and check the container; returns the header and the payload parts (streams, or the original)."""
    if len(blob) < 4 or blob[:4] != MAGIC:
        raise ContainerError("not a blm_lab compressed file (wrong magic bytes); check the input file")
    r = _Reader(blob)
    r.take(4)
    version = r.u8()
    if version == 1:
        raise ContainerError("this file is container version 1 (blm_lab 0.1): its float arithmetic was recorded too "
                             "incompletely to be decoded safely elsewhere; decompress it with blm_lab 0.1 on the "
                             "machine that made it")
    if version != FORMAT_VERSION:
        raise ContainerError(f"unsupported container version {version} (this blm_lab reads version {FORMAT_VERSION}); "
                             "use the blm_lab release that wrote it")
    mode = r.u8()
    if mode not in (MODE_CODED, MODE_STORED):
        raise ContainerError(f"the header is corrupted: unknown mode {mode}")
    original_length = r.varint()
    digest = r.take(CHECKSUM_BYTES)
    header = Header(original_length=original_length, checksum=digest, stored=mode == MODE_STORED)
    if not header.stored:
        numerics, mixing, header.precision = r.u8(), r.u8(), r.u8()
        if numerics >= len(NUMERICS) or mixing >= len(MIXING) or not 1 <= header.precision <= 32:
            raise ContainerError("the header is corrupted (or written by a newer blm_lab): unknown numerics, "
                                 "mixing or precision")
        header.numerics, header.mixing = NUMERICS[numerics], MIXING[mixing]
        if header.numerics == "none" and header.mixing == "none":
            raise ContainerError("the header is corrupted: a file coded with neither a model nor mixing")
        header.model_fingerprint = r.take(FINGERPRINT_BYTES)
        if header.mixing != "none":
            header.mixer_fingerprint = r.take(MIXER_FINGERPRINT_BYTES)
        n_setting = r.varint()
        if n_setting > len(blob):
            raise ContainerError("the header is corrupted: impossible setting count")
        header.setting = {r.str8(): r.str8() for _ in range(n_setting)}
        header.segment_bytes, n_segments = r.varint(), r.varint()
        if n_segments > len(blob):
            raise ContainerError("the header is corrupted: impossible segment count")
        table = [r.varint() for _ in range(n_segments)]
        header.stream_lengths = [entry >> 1 for entry in table]
        header.stored_segments = [bool(entry & 1) for entry in table]
    header_end = r.pos
    (crc,) = struct.unpack("<I", r.take(4))
    if crc != zlib.crc32(blob[:header_end]):
        raise ContainerError("the header is corrupted (crc32 mismatch); the file was damaged")
    payload = blob[r.pos:]
    if original_length > max_output_bytes:
        raise ContainerError(f"the file claims to decode to {original_length:,} bytes, more than the limit of "
                             f"{max_output_bytes:,}; raise max_output_bytes if that is expected")
    if header.stored:
        if len(payload) != original_length:
            raise ContainerError(f"the stored file holds {len(payload)} bytes, the header promises {original_length}; "
                                 "the file was cut short or appended to")
        return header, [payload]
    _check_segments(header, payload)
    streams, pos = [], 0
    for n in header.stream_lengths:
        streams.append(payload[pos:pos + n])
        pos += n
    return header, streams


def _check_segments(header: Header, payload: bytes) -> None:
    n, seg, count = header.original_length, header.segment_bytes, header.n_segments
    if seg < 1 or count != (-(-n // seg) if n else 0):
        raise ContainerError("the header is corrupted: the segment table does not cover the original length")
    for length, stream, stored in zip(header.segment_lengths(), header.stream_lengths, header.stored_segments):
        if stored and stream != length:
            raise ContainerError("the header is corrupted: a stored segment does not hold its own length")
        if not stored and length > max_bytes(stream, header):
            raise ContainerError("the header is corrupted: a segment claims more bytes than its stream can hold")
    expected = sum(header.stream_lengths)
    if len(payload) < expected:
        raise ContainerError(f"the file is truncated: {len(payload)} payload bytes, the header promises {expected}; "
                             "the file was cut short")
    if len(payload) > expected:
        raise ContainerError(f"the file has {len(payload) - expected} unexpected trailing bytes; it was damaged or appended to")
