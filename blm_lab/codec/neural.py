"""Lossless compression of real files with a byte model and the project's arithmetic coder.

The input is cut into segments that are coded as independent streams, advanced in lock-step: one
``model.step`` call predicts the next byte of every segment at once, one ``BatchEncoder.encode``
call codes them. The decoder runs *the identical computation*: the same step() calls with the same
batch shape on the same device and dtype, so its probabilities are bit-identical to the encoder's.
Floating point makes anything else unsafe; a faster full-sequence pass (``scoring.window_bits``)
may estimate sizes but never produces the code.

Every segment's first byte is coded with the uniform distribution (there is no context yet); each
later byte with the model's prediction from the rolling KV cache, which always holds the last
block_size bytes of the segment, so the cost per byte does not grow with the input.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import CompressionError, ConfigError, ContainerError, StreamError
from . import container
from .coder import PRECISION, BatchDecoder, BatchEncoder, ideal_bits, quantize

MAX_STREAMS = 256  # default segmentation: at most this many lock-step streams ...
MIN_SEGMENT_BYTES = 4096  # ... each at least this long (shorter segments lose too much context)


@dataclass
class CompressionStats:
    """What one compression or decompression measured. Sizes are bytes actually written (or read)."""

    original_bytes: int
    compressed_bytes: int  # the whole container: header, segment table and streams
    ideal_bits: float  # -sum log2(freq / 2**precision) of the coded bytes: the coder's target, header excluded
    seconds: float
    segments: int  # lock-step streams
    segment_bytes: int
    model_seconds: float  # time in model.step + softmax
    coder_seconds: float  # time in quantise + arithmetic coding

    @property
    def bits_per_byte(self) -> float:
        return 8 * self.compressed_bytes / self.original_bytes if self.original_bytes else 0.0

    @property
    def overhead_percent(self) -> float:
        """The container's bits over ``ideal_bits``: header, segment table, flush and coder rounding."""
        return 100 * (8 * self.compressed_bytes - self.ideal_bits) / self.ideal_bits if self.ideal_bits else 0.0

    @property
    def bytes_per_second(self) -> float:
        return self.original_bytes / self.seconds if self.seconds else 0.0

    @property
    def coder_share_percent(self) -> float:
        return 100 * self.coder_seconds / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        """The measured fields and the figures derived from them, JSON-ready."""
        return {**asdict(self), "bits_per_byte": self.bits_per_byte, "overhead_percent": self.overhead_percent,
                "bytes_per_second": self.bytes_per_second, "coder_share_percent": self.coder_share_percent}


# ----------------------------------------------------------------------------- fingerprints and settings

def model_fingerprint(model: torch.nn.Module) -> bytes:
    """16 bytes identifying a model: sha256 of its config and every weight, in state-dict order."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return h.digest()[:16]


def compute_setting(model: torch.nn.Module) -> dict:
    p = next(model.parameters())
    return {"device_type": p.device.type, "dtype": str(p.dtype).removeprefix("torch."), "torch_version": torch.__version__}


def default_segment_bytes(n: int, max_streams: int = MAX_STREAMS, min_segment: int = MIN_SEGMENT_BYTES) -> int:
    """Segments of at least ``min_segment`` bytes, and no more than ``max_streams`` of them."""
    return max(min_segment, math.ceil(n / max_streams), 1)


def _segment_bytes(n: int, segments: int | None, segment_bytes: int | None) -> int:
    if segments is not None and segment_bytes is not None:
        raise ConfigError("give segments or segment_bytes, not both")
    if segments is not None:
        if segments < 1:
            raise ConfigError(f"segments must be at least 1, got {segments}")
        return max(1, math.ceil(n / segments))
    if segment_bytes is not None:
        if segment_bytes < 1:
            raise ConfigError(f"segment_bytes must be at least 1, got {segment_bytes}")
        return segment_bytes
    return default_segment_bytes(n)


# ----------------------------------------------------------------------------- the lock-step loop

@dataclass
class _LoopTimes:
    model_seconds: float = 0.0  # model.step + softmax
    coder_seconds: float = 0.0  # quantise + arithmetic coding
    ideal_bits: float = 0.0  # -sum log2(freq / 2**precision) of the coded bytes


def _lockstep(model, lengths: np.ndarray, code, label: str, progress: bool) -> tuple[np.ndarray, _LoopTimes]:
    """The loop both sides run, so their model arithmetic is the same computation by construction.

    ``code(freqs, active) -> symbols`` codes one byte per active stream (the encoder encodes the known
    bytes and returns them, the decoder decodes and returns them). Step 0 uses the uniform distribution;
    every later step feeds each stream's previous byte to ``model.step`` with the batch shape fixed at
    B = len(lengths) (finished streams keep feeding 0 and are masked out of the coder), on the model's
    own device and dtype. Returns symbols (B, max length) and the measured times.
    """
    B = len(lengths)
    steps = int(lengths.max())
    p = next(model.parameters())
    cache = model.new_cache(B, device=p.device, dtype=p.dtype)
    times = _LoopTimes()
    symbols = np.zeros((B, steps), dtype=np.int64)
    bar = tqdm(total=int(lengths.sum()), desc=label, unit="B", unit_scale=True, disable=not progress, dynamic_ncols=True)

    def code_step(pos: int, freqs: np.ndarray) -> None:
        t = time.perf_counter()
        active = lengths > pos
        symbols[:, pos] = code(freqs, active)
        times.coder_seconds += time.perf_counter() - t
        times.ideal_bits += ideal_bits(freqs[active], symbols[active, pos])
        bar.update(int(active.sum()))

    model.eval()
    code_step(0, _uniform_freqs(B))
    with torch.inference_mode():
        for pos in range(1, steps):
            t = time.perf_counter()
            logits = model.step(torch.from_numpy(symbols[:, pos - 1]).to(p.device), cache)  # (B, 256)
            probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()  # (B, 256) float32
            t_coder = time.perf_counter()
            times.model_seconds += t_coder - t
            freqs = quantize(probs)
            times.coder_seconds += time.perf_counter() - t_coder
            code_step(pos, freqs)
    bar.close()
    return symbols, times


def _uniform_freqs(n_streams: int) -> np.ndarray:
    return quantize(np.full((n_streams, 256), 1.0 / 256, dtype=np.float32))


def _lengths_and_offsets(n: int, segment_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    n_segments = math.ceil(n / segment_bytes) if n else 0
    offsets = np.arange(n_segments, dtype=np.int64) * segment_bytes
    lengths = np.minimum(segment_bytes, n - offsets)
    return lengths, offsets


def _stats(n: int, blob: bytes, times: _LoopTimes, t_start: float, segments: int, segment_bytes: int) -> CompressionStats:
    return CompressionStats(original_bytes=n, compressed_bytes=len(blob), ideal_bits=times.ideal_bits,
                            seconds=time.perf_counter() - t_start, segments=segments, segment_bytes=segment_bytes,
                            model_seconds=times.model_seconds, coder_seconds=times.coder_seconds)


def compress_with_stats(data: bytes, model, *, segments: int | None = None, segment_bytes: int | None = None,
                        progress: bool = False) -> tuple[bytes, CompressionStats]:
    """Compress ``data`` with ``model``; returns the container bytes and measured statistics."""
    data = bytes(data)
    t_start = time.perf_counter()
    n = len(data)
    seg = _segment_bytes(n, segments, segment_bytes)
    lengths, offsets = _lengths_and_offsets(n, seg)
    B = len(lengths)
    setting = compute_setting(model)
    times = _LoopTimes()
    streams: list[bytes] = []
    if B:
        # known[b, t] is byte t of segment b; the tail of the last segment is padded with 0
        padded = np.zeros(B * seg, dtype=np.uint8)
        padded[:n] = np.frombuffer(data, dtype=np.uint8)
        known = padded.reshape(B, seg).astype(np.int64)
        encoder = BatchEncoder(B)
        column = iter(range(seg))

        def encode(freqs, active):
            symbols = known[:, next(column)]
            encoder.encode(freqs, symbols, active)
            return symbols

        _, times = _lockstep(model, lengths, encode, "compress", progress)
        streams = encoder.finish()
    header = container.Header(
        precision=PRECISION, original_length=n, checksum=container.checksum(data),
        model_fingerprint=model_fingerprint(model), device_type=setting["device_type"], dtype=setting["dtype"],
        torch_version=setting["torch_version"], segment_bytes=seg, stream_lengths=[len(s) for s in streams],
    )
    blob = container.pack(header, streams)
    return blob, _stats(n, blob, times, t_start, B, seg)


def compress(data: bytes, model, *, segments: int | None = None, segment_bytes: int | None = None,
             progress: bool = False) -> bytes:
    """Compress bytes with a byte model. Decompress with ``decompress(blob, model)`` and the same model."""
    return compress_with_stats(data, model, segments=segments, segment_bytes=segment_bytes, progress=progress)[0]


def check_compatible(header: container.Header, model, allow_compute_mismatch: bool = False) -> None:
    """Refuse the wrong model outright, and a different compute setting unless asked to try anyway."""
    if header.model_fingerprint != model_fingerprint(model):
        raise CompressionError(
            f"this file was compressed with a different model (fingerprint {header.model_fingerprint.hex()}, "
            f"this model {model_fingerprint(model).hex()}); decompress it with the checkpoint that compressed it")
    setting = compute_setting(model)
    stored = {"device_type": header.device_type, "dtype": header.dtype, "torch_version": header.torch_version}
    differ = [f"{k}: file {stored[k]!r}, here {setting[k]!r}" for k in stored if stored[k] != setting[k]]
    if differ and not allow_compute_mismatch:
        raise CompressionError(
            "this file was compressed under a different compute setting (" + "; ".join(differ) + "). Decoding needs "
            "bit-identical model arithmetic; run on the same setting, or pass --ignore-compute-mismatch "
            "(allow_compute_mismatch=True) to try anyway: the checksum then decides")


def decompress_with_stats(blob: bytes, model, *, progress: bool = False,
                          allow_compute_mismatch: bool = False) -> tuple[bytes, CompressionStats]:
    t_start = time.perf_counter()
    header, streams = container.unpack(bytes(blob))
    if header.precision != PRECISION:
        raise CompressionError(f"unsupported coder precision {header.precision} (this coder uses {PRECISION})")
    check_compatible(header, model, allow_compute_mismatch)
    n, seg = header.original_length, header.segment_bytes
    lengths, _ = _lengths_and_offsets(n, seg)
    if len(lengths) != header.n_segments:
        raise ContainerError("the header is corrupted: segment count does not match the original length")
    out, times = b"", _LoopTimes()
    if len(lengths):
        try:
            symbols, times = _lockstep(model, lengths, BatchDecoder(streams).decode, "decompress", progress)
        except StreamError as exc:
            raise CompressionError(f"the compressed data is corrupted ({exc}); nothing was written") from None
        # every segment but the last is full, so the rows of (B, segment length) laid end to end are the bytes
        out = symbols.astype(np.uint8).reshape(-1)[:n].tobytes()
    if container.checksum(out) != header.checksum:
        raise CompressionError(
            "checksum mismatch after decoding: the output is not the original. The file is corrupted, or it was "
            "made under a different compute setting; nothing was written")
    return out, _stats(n, blob, times, t_start, len(lengths), seg)


def decompress(blob: bytes, model, *, progress: bool = False, allow_compute_mismatch: bool = False) -> bytes:
    """Inverse of compress(); raises CompressionError / ContainerError naming the cause, never wrong output."""
    return decompress_with_stats(blob, model, progress=progress, allow_compute_mismatch=allow_compute_mismatch)[0]


class NeuralCompressor:
    """The model as a registry compressor: ``compress(data) -> bytes`` and ``decompress(blob) -> bytes``."""

    def __init__(self, model, name: str = "blm", segments: int | None = None, segment_bytes: int | None = None,
                 progress: bool = False):
        self.model = model
        self.name = name
        self.segments, self.segment_bytes = segments, segment_bytes
        self.progress = progress
        self.last_stats: CompressionStats | None = None
        self.num_params = model.num_params()

    def compress(self, data: bytes) -> bytes:
        blob, self.last_stats = compress_with_stats(data, self.model, segments=self.segments,
                                                    segment_bytes=self.segment_bytes, progress=self.progress)
        return blob

    def decompress(self, blob: bytes) -> bytes:
        return decompress(blob, self.model, progress=self.progress)
