"""The compressed-file container: the one place that knows its byte layout.

Layout (all integers little-endian; ``varint`` is unsigned LEB128)::

    magic            4 bytes   b"BLMZ"
    version          u8        FORMAT_VERSION
    precision        u8        the coder's frequency precision (totals are 2**precision)
    original_length  varint
    checksum         8 bytes   first 8 bytes of sha256(original)
    model_fp         16 bytes  fingerprint of the model (config and weights)
    device_type      str8      compute setting: "cpu" / "cuda"
    dtype            str8      "float32", ...
    torch_version    str8
    segment_bytes    varint    original bytes per segment (the last may be shorter)
    n_segments       varint
    stream_lengths   n_segments varints: compressed bytes of each segment's stream
    header_crc       u32       crc32 of every header byte above
    payload          the streams, concatenated in segment order

``str8`` is a u8 length then UTF-8 bytes. A reader checks, in order: magic, version, the header's
crc32 (a flipped bit in the header is named as such), that the payload holds exactly the bytes
the stream table promises (truncation or trailing garbage), and leaves the model, compute-setting
and checksum checks to the decompressor, which knows the model and the device.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

from ..errors import ContainerError

MAGIC = b"BLMZ"
FORMAT_VERSION = 1


@dataclass
class Header:
    precision: int
    original_length: int
    checksum: bytes  # 8 bytes
    model_fingerprint: bytes  # 16 bytes
    device_type: str
    dtype: str
    torch_version: str
    segment_bytes: int
    stream_lengths: list[int]

    @property
    def n_segments(self) -> int:
        return len(self.stream_lengths)

    def segment_lengths(self) -> list[int]:
        """Original bytes in each segment: all segment_bytes long but the last."""
        n, s = self.original_length, self.segment_bytes
        return [min(s, n - i * s) for i in range(self.n_segments)]


def checksum(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:8]


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


def pack(header: Header, streams: list[bytes]) -> bytes:
    assert len(streams) == header.n_segments and all(len(s) == n for s, n in zip(streams, header.stream_lengths))
    head = bytearray(MAGIC)
    head += bytes([FORMAT_VERSION, header.precision])
    head += _varint(header.original_length)
    head += header.checksum
    head += header.model_fingerprint
    head += _str8(header.device_type) + _str8(header.dtype) + _str8(header.torch_version)
    head += _varint(header.segment_bytes) + _varint(header.n_segments)
    for n in header.stream_lengths:
        head += _varint(n)
    head += struct.pack("<I", zlib.crc32(head))
    return bytes(head) + b"".join(streams)


def unpack(blob: bytes) -> tuple[Header, list[bytes]]:
    """Parse and check the container; returns the header and each segment's stream."""
    if len(blob) < 4 or blob[:4] != MAGIC:
        raise ContainerError("not a blm_lab compressed file (wrong magic bytes); check the input file")
    r = _Reader(blob)
    r.take(4)
    version = r.u8()
    if version != FORMAT_VERSION:
        raise ContainerError(f"unsupported container version {version} (this blm_lab reads version {FORMAT_VERSION}); "
                             "use the blm_lab release that wrote it")
    precision = r.u8()
    original_length = r.varint()
    digest = r.take(8)
    model_fp = r.take(16)
    device_type, dtype, torch_version = r.str8(), r.str8(), r.str8()
    segment_bytes = r.varint()
    n_segments = r.varint()
    if n_segments > len(blob):
        raise ContainerError("the header is corrupted: impossible segment count")
    stream_lengths = [r.varint() for _ in range(n_segments)]
    header_end = r.pos
    (crc,) = struct.unpack("<I", r.take(4))
    if crc != zlib.crc32(blob[:header_end]):
        raise ContainerError("the header is corrupted (crc32 mismatch); the file was damaged")
    header = Header(precision, original_length, digest, model_fp, device_type, dtype, torch_version,
                    segment_bytes, stream_lengths)
    if n_segments and (segment_bytes == 0 or (n_segments - 1) * segment_bytes >= original_length
                       or n_segments * segment_bytes < original_length):
        raise ContainerError("the header is corrupted: the segment table does not cover the original length")
    payload = blob[r.pos:]
    expected = sum(stream_lengths)
    if len(payload) < expected:
        raise ContainerError(f"the file is truncated: {len(payload)} payload bytes, the header promises {expected}; "
                             "the file was cut short")
    if len(payload) > expected:
        raise ContainerError(f"the file has {len(payload) - expected} unexpected trailing bytes; it was damaged or appended to")
    streams, pos = [], 0
    for n in stream_lengths:
        streams.append(payload[pos:pos + n])
        pos += n
    return header, streams
