"""Hostile input: over a thousand mutated containers (bit flips, truncations, splices, huge claimed lengths with
the crc recomputed). Every one must give the original bytes or a clean BlmError (ContainerError or
CompressionError): never wrong output, never another exception, never a long hang, never a MemoryError."""

from __future__ import annotations

import random
import struct
import time
import zlib
from collections import Counter

import pytest

from blm_lab.codec import container
from blm_lab.codec.neural import compress, decompress
from blm_lab.errors import BlmError
from blm_lab.gpt import BytesGPTConfig
from conftest import train_briefly

pytestmark = pytest.mark.slow

TEXT = b"the cat sat on the mat. the dog sat on the log. "


@pytest.fixture(scope="module")
def model():
    """A tiny model trained for a moment, so that the text is coded (not stored) in two segments."""
    return train_briefly(TEXT * 20, BytesGPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=32))


def with_crc(head_and_payload: bytes, header_end: int) -> bytes:
    """The container with its header crc recomputed over bytes [0, header_end) (a crafted, not damaged, file)."""
    head = head_and_payload[:header_end]
    return head + struct.pack("<I", zlib.crc32(head)) + head_and_payload[header_end + 4:]


def header_end(blob: bytes) -> int:
    header, parts = container.unpack(blob)
    return len(blob) - sum(len(p) for p in parts) - 4


def crafted_lengths(blob: bytes, rng: random.Random) -> bytes:
    """Rewrite the original length (and so the segment count it implies) to a huge value, crc fixed."""
    end = header_end(blob)
    pos = 6  # magic, version, mode
    while blob[pos] & 0x80:
        pos += 1
    huge = container._varint(rng.choice([2**31, 2**40, 2**62, 10**12, 2**33 + 7]))
    return with_crc(blob[:6] + huge + blob[pos + 1:], end - (pos + 1 - 6) + len(huge))


def mutations(blobs: list[bytes], rng: random.Random, count: int):
    """(kind, the container it came from, the mutated bytes), ``count`` times."""
    for _ in range(count):
        blob = rng.choice(blobs)
        kind = rng.choice(["flip", "flip", "flip", "truncate", "splice", "duplicate", "join", "crafted"])
        bad = bytearray(blob)
        if kind == "flip":
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(bad))
                bad[i] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            bad = bad[:rng.randrange(len(bad))]
        elif kind == "splice":
            i = rng.randrange(len(bad))
            bad[i:i + rng.randint(0, 8)] = rng.randbytes(rng.randint(0, 8))
        elif kind == "duplicate":
            i = rng.randrange(len(bad))
            bad[i:i] = bad[i:i + rng.randint(1, 16)]
        elif kind == "join":
            bad += rng.choice(blobs)
        else:
            bad = bytearray(crafted_lengths(blob, rng))
        yield kind, blob, bytes(bad)


def test_a_thousand_mutated_containers_fail_cleanly(model):
    originals = {}  # container -> the bytes it decodes to
    for data in (TEXT * 4, TEXT * 3 + bytes(range(256)), b"tiny"):
        for numerics in ("portable", "float"):
            originals[compress(data, model, numerics=numerics, segments=2)] = data
    headers = [container.unpack(blob)[0] for blob in originals]
    assert any(h.stored for h in headers) and {h.numerics for h in headers if not h.stored} == {"portable", "float"}
    outcomes, slowest = Counter(), 0.0
    for kind, source, bad in mutations(list(originals), random.Random(1234), 1100):
        t = time.perf_counter()
        try:
            out = decompress(bad, model)
        except BlmError as exc:
            outcomes[(kind, type(exc).__name__)] += 1
        else:  # a mutation can leave a file that still decodes (a flip in a stream's slack bits): to its original
            assert out == originals[source], f"{kind}: a mutated container decoded to wrong bytes"
            outcomes[(kind, "decoded the original")] += 1
        slowest = max(slowest, time.perf_counter() - t)
    print(sorted(outcomes.items()), f"slowest {slowest:.2f} s")
    assert sum(outcomes.values()) == 1100
    assert slowest < 10.0, f"one mutated container took {slowest:.1f} s"
    assert outcomes[("crafted", "ContainerError")] > 50  # huge lengths are refused before anything is allocated
