"""Lossless compression of real files with a byte model and the project's arithmetic coder.

The input is cut into segments that are coded as independent streams, advanced in lock-step: at each
step one call gives the integer frequencies of the next byte of every segment at once, and one
``BatchEncoder.encode`` call codes them. The decoder runs the same loop, so it must get the same
integers. Two numerics give them:

* ``portable`` (the default): ``codec.portable``, an integer model whose frequencies are a pure function
  of the weights and the bytes coded so far, the same on every machine, thread count, instruction set,
  batch size and device. Its file decodes anywhere; the container records only the fingerprint of
  its integer weights and tables.
* ``float``: the model's own float ``step()``, softmax and ``coder.quantize``; slightly faster on some
  settings, but its last bits depend on the arithmetic. The container records everything that changes
  it (torch version, device, dtype, threads, CPU capability and model, BLAS and oneDNN, GPU, TF32 and
  cuBLAS settings); the decoder pins the thread count and refuses any other difference up front.

Every segment's first byte is coded with the uniform distribution (there is no context yet); each
later byte with the model's prediction from its rolling KV cache, which always holds the last
block_size bytes of the segment, so the cost per byte does not grow with the input.

Never expanding: a segment whose stream would be no shorter than the segment itself is stored as its
bytes, and a file that would not shrink at all is stored whole: the output is at most the input plus
``container.stored_overhead(n)`` bytes (23 for anything under 32 GiB).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import re
import time
from dataclasses import asdict, dataclass

import numpy as np
from tqdm.auto import tqdm

from ..errors import CompressionError, ConfigError, ContainerError, StreamError
from . import container
from .coder import PRECISION, BatchDecoder, BatchEncoder, quantize
from .mixing.config import DEFAULT_REVISION, REVISIONS, revision_of
from .mixing.engine import ContextMixer, StepTrace
from .trace import ByteTrace

# torch is imported only where a model is used: context mixing alone starts without it

BYTES_PER_PARAM = 2  # a model shipped with the data costs 2 bytes a parameter (bf16), as in Delétang et al.
MAX_STREAMS = 256  # default segmentation: at most this many lock-step streams ...
MIN_SEGMENT_BYTES = 4096  # ... each at least this long (shorter segments lose too much context)
LOOP_CHUNK_BYTES = 1 << 18  # without a model, one compiled call codes this many bytes (then the progress bar moves)
NUMERICS = container.NUMERICS


@dataclass
class CompressionStats:
    """What one compression or decompression measured. Sizes are bytes actually written (or read)."""

    original_bytes: int
    compressed_bytes: int  # the whole container: header, segment table and streams
    ideal_bits: float  # -sum log2(freq / 2**precision) of the coded bytes, 8 per stored byte; header excluded
    seconds: float
    segments: int  # lock-step streams
    segment_bytes: int
    stored_segments: int  # segments kept as their own bytes (coding them would not have made them smaller)
    numerics: str  # "portable", "float", "none" (context mixing alone), or "stored" (the file kept as it is)
    mixing: str  # "cm" (bits coded with context mixing) or "none" (byte distributions coded directly)
    model_seconds: float  # producing the integer frequencies (the model and its quantisation)
    coder_seconds: float  # arithmetic coding
    trace: ByteTrace | None = None  # per-byte trace, with ``trace=True`` (not part of ``to_dict``)

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
        fields = {k: v for k, v in asdict(self).items() if k != "trace"}
        return {**fields, "bits_per_byte": self.bits_per_byte, "overhead_percent": self.overhead_percent,
                "bytes_per_second": self.bytes_per_second, "coder_share_percent": self.coder_share_percent}


# ----------------------------------------------------------------------------- the two numerics

def model_fingerprint(model) -> bytes:
    """16 bytes identifying a float model: sha256 of its config and every weight, in state-dict order."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return h.digest()[:container.FINGERPRINT_BYTES]


def _library_versions() -> dict[str, str]:
    import torch

    config = torch.__config__.show()
    blas = re.search(r"Math Kernel Library Version ([^\s]+)", config) or re.search(r"BLAS_INFO=(\w+)", config)
    onednn = re.search(r"MKL-DNN v([\d.]+)", config) or re.search(r"oneDNN v([\d.]+)", config)
    return {"blas": blas.group(1) if blas else "", "onednn": onednn.group(1) if onednn else ""}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        return found.group(1).strip() if found else platform.processor()
    except OSError:
        return platform.processor()


def compute_setting(model) -> dict[str, str]:
    """Everything that changes the float path's arithmetic, as strings (the container stores them)."""
    import torch

    p = next(model.parameters())
    setting = {"torch": torch.__version__, "device": p.device.type, "dtype": str(p.dtype).removeprefix("torch.")}
    if p.device.type == "cuda":
        matmul = torch.backends.cuda.matmul
        setting.update(gpu=torch.cuda.get_device_name(p.device), cuda=str(torch.version.cuda),
                       cudnn=str(torch.backends.cudnn.version()), tf32_matmul=str(matmul.allow_tf32),
                       tf32_cudnn=str(torch.backends.cudnn.allow_tf32),
                       fp16_reduced=str(matmul.allow_fp16_reduced_precision_reduction),
                       bf16_reduced=str(matmul.allow_bf16_reduced_precision_reduction),
                       cublas_workspace=os.environ.get("CUBLAS_WORKSPACE_CONFIG", ""))
    else:
        setting.update(threads=str(torch.get_num_threads()), cpu_capability=torch.backends.cpu.get_cpu_capability(),
                       cpu=_cpu_model(), onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
                       mkl_cbwr=os.environ.get("MKL_CBWR", ""), **_library_versions())
    return setting


class PortablePredictor:
    """Frequencies from ``codec.portable``: bit-identical everywhere (the default numerics)."""

    numerics = "portable"

    def __init__(self, model):
        from .portable.model import PortableModel

        self.model = model
        self.device = next(model.parameters()).device
        self.portable = PortableModel.from_float(model)

    def fingerprint(self) -> bytes:
        return self.portable.fingerprint()[:container.FINGERPRINT_BYTES]

    def setting(self) -> dict[str, str]:
        return {}  # the fingerprint is the whole contract

    def new_cache(self, batch_size: int):
        return self.portable.new_cache(batch_size, self.device)

    def freqs(self, previous: np.ndarray, cache) -> np.ndarray:
        import torch

        return self.portable.step(torch.from_numpy(previous), cache)

    @contextlib.contextmanager
    def running(self, setting: dict | None = None):
        yield


class FloatPredictor:
    """Frequencies from the model's float step(), softmax and ``coder.quantize``: exact only under the
    same compute setting (see ``compute_setting``)."""

    numerics = "float"

    def __init__(self, model):
        self.model = model
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype

    def fingerprint(self) -> bytes:
        return model_fingerprint(self.model)

    def setting(self) -> dict[str, str]:
        return compute_setting(self.model)

    def new_cache(self, batch_size: int):
        return self.model.new_cache(batch_size, device=self.device, dtype=self.dtype)

    def freqs(self, previous: np.ndarray, cache) -> np.ndarray:
        import torch

        logits = self.model.step(torch.from_numpy(previous).to(self.device), cache)  # (B, 256)
        return quantize(torch.softmax(logits.float(), dim=-1).cpu().numpy())

    @contextlib.contextmanager
    def running(self, setting: dict | None = None):
        """Eval mode and no autograd for the loop; with a decoded file's ``setting``, its thread count."""
        import torch

        threads = torch.get_num_threads()
        if setting and setting.get("threads"):
            torch.set_num_threads(int(setting["threads"]))
        try:
            with torch.inference_mode():
                yield
        finally:
            torch.set_num_threads(threads)


def make_predictor(model, numerics: str = "portable"):
    if numerics not in NUMERICS:
        raise ConfigError(f"numerics {numerics!r} is not one of {', '.join(NUMERICS)}")
    return PortablePredictor(model) if numerics == "portable" else FloatPredictor(model)


@contextlib.contextmanager
def _eval_mode(model):
    """The model in eval mode for the loop, its train/eval mode restored afterwards."""
    if model is None:
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------- segmentation

def default_segment_bytes(n: int, max_streams: int = MAX_STREAMS, min_segment: int = MIN_SEGMENT_BYTES,
                          with_model: bool = True) -> int:
    """With a model: segments of at least ``min_segment`` bytes, and no more than ``max_streams`` of them
    (the model's step is batched over the streams, so more streams run faster). Context mixing alone: one
    segment. Its loop is compiled and single-threaded, so the stream count hardly moves its speed, while
    every extra stream splits the file's statistics (benchmarks/bench_mixing.py --segments: one stream
    was 1.6% smaller than the old default's 28 on the tiny-shakespeare validation split and 6.3% smaller
    than its 256 on alice29+asyoulik+lcet10+plrabn12, at about the same coding time)."""
    if not with_model:
        return max(n, 1)
    return max(min_segment, math.ceil(n / max_streams), 1)


def _segment_bytes(n: int, segments: int | None, segment_bytes: int | None, with_model: bool) -> int:
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
    return default_segment_bytes(n, with_model=with_model)


def _segment_lengths(n: int, segment_bytes: int) -> np.ndarray:
    n_segments = math.ceil(n / segment_bytes) if n else 0
    return np.minimum(segment_bytes, n - np.arange(n_segments, dtype=np.int64) * segment_bytes)


def _segment_matrix(data: bytes, segment_bytes: int, n_segments: int) -> np.ndarray:
    """(B, steps) uint8: byte t of segment b at [b, t], steps = min(segment_bytes, n); the last segment's
    tail is 0. (A segment_bytes larger than the data means one segment: nothing is allocated for it.)"""
    steps = min(segment_bytes, len(data))
    padded = np.zeros(n_segments * steps, dtype=np.uint8)
    padded[:len(data)] = np.frombuffer(data, dtype=np.uint8)
    return padded.reshape(n_segments, steps)


# ----------------------------------------------------------------------------- the lock-step loop

@dataclass
class _LoopTimes:
    model_seconds: float = 0.0
    coder_seconds: float = 0.0  # the coder, and with mixing the context mixer


def _uniform_freqs(n_streams: int) -> np.ndarray:
    return np.full((n_streams, 256), (1 << PRECISION) // 256, dtype=np.int64)


class _ByteCoding:
    """Mixing "none": each step codes the predictor's byte distributions directly (precision 24).

    ``coder`` is a BatchEncoder (``symbols`` (B, steps) uint8 hold all bytes) or a BatchDecoder (``symbols``
    holds the stored segments' bytes, which it returns without decoding, and receives the decoded ones).
    ``bits`` (B,) is each stream's ideal code length; with ``trace``, ``byte_bits`` (B, steps) is per byte."""

    precision = PRECISION
    steps_per_call = 1

    def __init__(self, coder, decoding: bool, symbols: np.ndarray, stored: np.ndarray, lengths: np.ndarray,
                 trace: bool):
        self.coder, self.decoding, self.symbols, self.stored, self.lengths = coder, decoding, symbols, stored, lengths
        self.bits = np.zeros(symbols.shape[0], dtype=np.float64)
        self.byte_bits = np.zeros(symbols.shape if trace else (0, 0), dtype=np.float64)

    def __call__(self, first: int, last: int, freqs: np.ndarray) -> None:
        active = self.lengths > first
        if self.decoding:
            decoded = self.coder.decode(freqs, active & ~self.stored)
            self.symbols[:, first] = np.where(self.stored, self.symbols[:, first], decoded)
        else:
            self.coder.encode(freqs, self.symbols[:, first].astype(np.int64), active)
        chosen = np.take_along_axis(freqs, self.symbols[:, first, None].astype(np.int64), axis=1)[:, 0]
        cost = np.where(active, PRECISION - np.log2(chosen), 0.0)
        self.bits += cost
        if self.byte_bits.size:
            self.byte_bits[:, first] = cost

    def trace_bits(self) -> np.ndarray:
        return self.byte_bits


class _MixedCoding:
    """Mixing "cm": ``ContextMixer.code`` codes the 8 bits of every stream, the predictor's integer
    frequencies (if any) one of its inputs (precision 16): one step per call with a model, and without one
    many steps per compiled call."""

    precision = 16

    def __init__(self, coder, decoding: bool, symbols: np.ndarray, stored: np.ndarray, lengths: np.ndarray,
                 trace: bool, neural: bool, revision: int):
        B, steps = symbols.shape
        self.mixer = ContextMixer(B, REVISIONS[revision], neural=neural)
        self.coder, self.symbols, self.stored, self.lengths, self.neural = coder, symbols, stored, lengths, neural
        self.bits = np.zeros(B, dtype=np.float64)
        self.trace = StepTrace.new(steps, B, neural_share=neural) if trace else None
        self.steps_per_call = 1 if neural else max(1, LOOP_CHUNK_BYTES // B)

    def __call__(self, first: int, last: int, freqs: np.ndarray | None) -> None:
        self.mixer.code(self.coder, first, last, self.lengths, self.symbols, self.stored,
                        freqs if self.neural else None, self.bits, self.trace)

    def trace_bits(self) -> np.ndarray:
        """(B, steps) float64: each byte's code length from the p1 its bits were coded with."""
        return self.trace.bits.T


def _lockstep(predictor, lengths: np.ndarray, coding, label: str, progress: bool, model_bits: np.ndarray | None):
    """The loop both sides run, so their predictions are the same computation by construction.

    ``coding(first, last, freqs)`` codes steps first..last-1 of every active stream into (or from)
    ``coding.symbols`` (``_ByteCoding`` or ``_MixedCoding``). With a predictor, one step a call: step 0's
    frequencies are uniform, every later step feeds each stream's previous byte to the predictor with the
    batch fixed at B = len(lengths) (finished streams keep feeding 0 and are masked out of the coder).
    Without one (context mixing alone), ``coding.steps_per_call`` steps run in one compiled call.
    ``model_bits`` (B, steps), when given, receives the model's surprisal of each byte. Returns the times.
    """
    B = len(lengths)
    steps = int(lengths.max())
    cache = predictor.new_cache(B) if predictor is not None else None
    times = _LoopTimes()
    bar = tqdm(total=int(lengths.sum()), desc=label, unit="B", unit_scale=True, disable=not progress, dynamic_ncols=True)
    freqs = _uniform_freqs(B) if predictor is not None else None
    first = 0
    while first < steps:
        last = min(first + coding.steps_per_call, steps)
        if first and predictor is not None:
            t = time.perf_counter()
            freqs = predictor.freqs(coding.symbols[:, first - 1].astype(np.int64), cache)  # (B, 256) int64
            times.model_seconds += time.perf_counter() - t
        t = time.perf_counter()
        coding(first, last, freqs)
        times.coder_seconds += time.perf_counter() - t
        if model_bits is not None and first:
            chosen = np.take_along_axis(freqs, coding.symbols[:, first, None].astype(np.int64), axis=1)[:, 0]
            model_bits[:, first] = np.log2(freqs.sum(axis=1)) - np.log2(chosen)
        bar.update(int(np.minimum(lengths, last).sum() - np.minimum(lengths, first).sum()))
        first = last
    bar.close()
    return times


def _coding(mixing: str, coder, decoding: bool, symbols: np.ndarray, stored: np.ndarray, lengths: np.ndarray,
            predictor, trace: bool, revision: int):
    if mixing == "cm":
        return _MixedCoding(coder, decoding, symbols, stored, lengths, trace, neural=predictor is not None,
                            revision=revision)
    return _ByteCoding(coder, decoding, symbols, stored, lengths, trace)


def _precision(mixing: str) -> int:
    return _MixedCoding.precision if mixing == "cm" else _ByteCoding.precision


def _mixer_fingerprint(mixing: str, revision: int) -> bytes:
    if mixing == "none":
        return b""
    return REVISIONS[revision].fingerprint()[:container.MIXER_FINGERPRINT_BYTES]


def _check_revision(revision: int) -> None:
    if revision not in REVISIONS:
        raise ConfigError(f"mixer revision {revision!r} is not one of {', '.join(map(str, REVISIONS))}")


def _trace_method(numerics: str, mixing: str) -> str:
    return "cm" if numerics == "none" else ("model" if mixing == "none" else "blm")


def _byte_trace(data: np.ndarray, lengths: np.ndarray, segment_bytes: int, coding, stored: np.ndarray,
                model_bits: np.ndarray | None, method: str) -> ByteTrace:
    """The (B, steps) per-byte arrays of a lock-step run laid out in file order (every segment but the last
    is full, so the rows end to end are the bytes)."""
    n, B = len(data), len(lengths)

    def file_order(matrix):
        return matrix.reshape(-1)[:n]

    coded = np.where(stored[:, None], 8.0, coding.trace_bits())
    share = coding.trace.share if isinstance(coding, _MixedCoding) and coding.trace.share.size else None
    steps = coded.shape[1]
    return ByteTrace(
        data=data, coded_bits=file_order(coded),
        model_bits=file_order(model_bits) if model_bits is not None else None,
        neural_share=file_order(share.T).astype(np.float32) if share is not None else None,
        segment=file_order(np.repeat(np.arange(B, dtype=np.int32)[:, None], steps, axis=1)),
        position=file_order(np.tile(np.arange(steps, dtype=np.int32), (B, 1))), method=method, streams=B)


def _stored_trace(data: np.ndarray, method: str) -> ByteTrace:
    n = len(data)
    return ByteTrace(data=data, coded_bits=np.full(n, 8.0), model_bits=None, neural_share=None,
                     segment=np.zeros(n, dtype=np.int32), position=np.arange(n, dtype=np.int32), method=method,
                     streams=1)


def _model_bits(predictor, trace: bool, shape) -> np.ndarray | None:
    """(B, steps) of NaN (filled by ``_lockstep``; step 0 has no prediction), when tracing with a model."""
    return np.full(shape, np.nan) if trace and predictor is not None else None


def _stats(n: int, blob: bytes, ideal: float, times: _LoopTimes, t_start: float, segments: int, segment_bytes: int,
           stored_segments: int, numerics: str, mixing: str) -> CompressionStats:
    return CompressionStats(original_bytes=n, compressed_bytes=len(blob), ideal_bits=float(ideal),
                            seconds=time.perf_counter() - t_start, segments=int(segments),
                            segment_bytes=int(segment_bytes), stored_segments=int(stored_segments), numerics=numerics,
                            mixing=mixing, model_seconds=times.model_seconds, coder_seconds=times.coder_seconds)


# ----------------------------------------------------------------------------- compress

def compress_with_stats(data: bytes, model=None, *, numerics: str = "portable", mixing: str = "cm",
                        segments: int | None = None, segment_bytes: int | None = None,
                        progress: bool = False, trace: bool = False,
                        mixer_revision: int = DEFAULT_REVISION) -> tuple[bytes, CompressionStats]:
    """Compress ``data`` with ``model`` (None: context mixing alone); returns the container bytes and
    measured statistics. ``mixing="cm"`` (the default) codes every bit with the context mixer of
    ``codec.mixing`` (``mixer_revision``: one of ``mixing.config.REVISIONS``, recorded in the file by its
    fingerprint), the model one of its inputs; ``"none"`` codes the model's byte distributions as
    they are. ``trace=True`` also sets ``stats.trace``, a ``codec.trace.ByteTrace`` of where each byte's
    bits went (the same file is written)."""
    data = bytes(data)
    if mixing not in container.MIXING:
        raise ConfigError(f"mixing {mixing!r} is not one of {', '.join(container.MIXING)}")
    if model is None and mixing == "none":
        raise ConfigError("with no model there is nothing to code with: give a model, or mixing='cm'")
    _check_revision(mixer_revision)
    t_start = time.perf_counter()
    n = len(data)
    seg = _segment_bytes(n, segments, segment_bytes, with_model=model is not None)
    lengths = _segment_lengths(n, seg)
    B = len(lengths)
    predictor = make_predictor(model, numerics) if model is not None else None
    used_numerics = predictor.numerics if predictor is not None else "none"
    times, streams, stored, ideal, byte_trace = _LoopTimes(), [], [], 8.0 * n, None
    method = _trace_method(used_numerics, mixing)
    if B:
        known = _segment_matrix(data, seg, B)
        encoder = BatchEncoder(B, _precision(mixing))
        coding = _coding(mixing, encoder, False, known, np.zeros(B, dtype=bool), lengths, predictor, trace,
                         mixer_revision)
        model_bits = _model_bits(predictor, trace, known.shape)
        with _eval_mode(model), (predictor.running() if predictor else contextlib.nullcontext()):
            times = _lockstep(predictor, lengths, coding, "compress", progress, model_bits)
        coded = encoder.finish()
        # a segment that does not shrink is stored as its own bytes
        stored = [bool(len(stream) >= length) for stream, length in zip(coded, lengths)]
        streams = [known[b, :lengths[b]].tobytes() if stored[b] else coded[b] for b in range(B)]
        ideal = float(np.where(stored, 8.0 * lengths, coding.bits).sum())
        if trace:
            byte_trace = _byte_trace(np.frombuffer(data, dtype=np.uint8), lengths, seg, coding,
                                     np.array(stored, dtype=bool), model_bits, method)
    header = container.Header(
        original_length=n, checksum=container.checksum(data), numerics=used_numerics, mixing=mixing,
        precision=_precision(mixing),
        model_fingerprint=predictor.fingerprint() if predictor else bytes(container.FINGERPRINT_BYTES),
        mixer_fingerprint=_mixer_fingerprint(mixing, mixer_revision), setting=predictor.setting() if predictor else {},
        segment_bytes=seg, stream_lengths=[len(s) for s in streams], stored_segments=stored)
    blob = container.pack(header, streams)
    if len(blob) > n + container.stored_overhead(n):  # coding did not pay: keep the file as it is
        blob = container.pack(container.Header(original_length=n, checksum=header.checksum, stored=True), [data])
        stats = _stats(n, blob, 8.0 * n, times, t_start, 0, seg, 0, "stored", "none")
        byte_trace = _stored_trace(np.frombuffer(data, dtype=np.uint8), method) if trace else None
    else:
        stats = _stats(n, blob, ideal, times, t_start, B, seg, sum(stored), used_numerics, mixing)
    stats.trace = byte_trace
    return blob, stats


def compress(data: bytes, model=None, *, numerics: str = "portable", mixing: str = "cm", segments: int | None = None,
             segment_bytes: int | None = None, progress: bool = False, mixer_revision: int = DEFAULT_REVISION) -> bytes:
    """Compress bytes (see ``compress_with_stats``). Decompress with ``decompress(blob, model)`` and the same model."""
    return compress_with_stats(data, model, numerics=numerics, mixing=mixing, segments=segments,
                               segment_bytes=segment_bytes, progress=progress, mixer_revision=mixer_revision)[0]


# ----------------------------------------------------------------------------- decompress

def check_compatible(header: container.Header, predictor, allow_compute_mismatch: bool = False) -> None:
    """Refuse the wrong model or mixer outright; for float files, a different compute setting unless asked
    to try anyway."""
    if header.mixing != "none" and revision_of(header.mixer_fingerprint) is None:
        known = ", ".join(f"{r}: {_mixer_fingerprint(header.mixing, r).hex()}" for r in REVISIONS)
        raise CompressionError(f"this file was compressed with an unknown context mixer revision (fingerprint "
                               f"{header.mixer_fingerprint.hex()}; this blm_lab decodes revisions {known})"
                               "; decompress it with the blm_lab release that wrote it")
    if predictor is None:
        return
    if header.model_fingerprint != predictor.fingerprint():
        raise CompressionError(
            f"this file was compressed with a different model (fingerprint {header.model_fingerprint.hex()}, "
            f"this model {predictor.fingerprint().hex()}); decompress it with the checkpoint that compressed it")
    if header.numerics != "float":
        return
    threads = header.setting.get("threads", "1")
    if not (threads.isdigit() and 1 <= int(threads) <= 1024):
        raise ContainerError(f"the header is corrupted: thread count {threads!r}")
    here = predictor.setting()
    pinned = {"threads"}  # applied by the decoder, not compared
    differ = [f"{k}: file {header.setting.get(k, '')!r}, here {here.get(k, '')!r}"
              for k in sorted(set(header.setting) | set(here)) if k not in pinned
              and header.setting.get(k, "") != here.get(k, "")]
    if differ and not allow_compute_mismatch:
        raise CompressionError(
            "this file was compressed with float numerics under another compute setting (" + "; ".join(differ) +
            "). Float decoding needs bit-identical arithmetic: run it where it was made, or pass "
            "--ignore-compute-mismatch (allow_compute_mismatch=True) to try anyway; files made with the default "
            "portable numerics decode anywhere")


def decompress_with_stats(blob: bytes, model=None, *, progress: bool = False, allow_compute_mismatch: bool = False,
                          max_output_bytes: int = container.MAX_OUTPUT_BYTES,
                          trace: bool = False) -> tuple[bytes, CompressionStats]:
    """Inverse of ``compress_with_stats``, with the statistics of the decoding (and its trace with
    ``trace=True``: the same probabilities as the compression's, so the same trace)."""
    t_start = time.perf_counter()
    header, parts = container.unpack(bytes(blob), max_output_bytes)
    n, seg = header.original_length, header.segment_bytes
    if header.stored:
        out = parts[0]
        if container.checksum(out) != header.checksum:
            raise CompressionError("checksum mismatch in a stored file: the file is corrupted; nothing was written")
        stats = _stats(n, blob, 8.0 * n, _LoopTimes(), t_start, 0, seg, 0, "stored", "none")
        stats.trace = (_stored_trace(np.frombuffer(out, dtype=np.uint8), _trace_method("none" if model is None else "portable", "cm"))
                       if trace else None)
        return out, stats
    if header.precision != _precision(header.mixing):
        raise CompressionError(f"unsupported coder precision {header.precision} for mixing {header.mixing!r}")
    if header.numerics != "none" and model is None:
        raise CompressionError(f"this file was compressed with a model (fingerprint {header.model_fingerprint.hex()}); "
                               "pass the checkpoint that compressed it (--model)")
    predictor = make_predictor(model, header.numerics) if header.numerics != "none" else None
    check_compatible(header, predictor, allow_compute_mismatch)
    lengths = _segment_lengths(n, seg)
    stored = np.array(header.stored_segments, dtype=bool)
    known = np.zeros((len(lengths), int(lengths.max())), dtype=np.uint8)  # stored segments' bytes, known to both
    for b in np.flatnonzero(stored):
        known[b, :lengths[b]] = np.frombuffer(parts[b], dtype=np.uint8)
    decoder = BatchDecoder([b"" if s else p for p, s in zip(parts, stored)], header.precision)
    revision = revision_of(header.mixer_fingerprint) if header.mixing != "none" else DEFAULT_REVISION
    coding = _coding(header.mixing, decoder, True, known, stored, lengths, predictor, trace, revision)
    model_bits = _model_bits(predictor, trace, known.shape)
    # a float file decoded under an overridden setting mismatch may fail here without being damaged
    maybe = " or the float arithmetic here differs from where it was made" if header.numerics == "float" else ""
    try:
        with _eval_mode(model), (predictor.running(header.setting) if predictor else contextlib.nullcontext()):
            times = _lockstep(predictor, lengths, coding, "decompress", progress, model_bits)
    except StreamError as exc:
        raise CompressionError(f"decoding failed: the compressed data is corrupted{maybe} ({exc}); nothing was written") from None
    # every segment but the last is full, so the rows of (B, segment length) laid end to end are the bytes
    out = known.reshape(-1)[:n].tobytes()
    if container.checksum(out) != header.checksum:
        raise CompressionError(f"checksum mismatch after decoding: the output is not the original; the file is "
                               f"corrupted{maybe}; nothing was written")
    ideal = float(np.where(stored, 8.0 * lengths, coding.bits).sum())
    stats = _stats(n, blob, ideal, times, t_start, len(lengths), seg, int(stored.sum()), header.numerics,
                   header.mixing)
    if trace:
        stats.trace = _byte_trace(np.frombuffer(out, dtype=np.uint8), lengths, seg, coding, stored, model_bits,
                                  _trace_method(header.numerics, header.mixing))
    return out, stats


def decompress(blob: bytes, model=None, *, progress: bool = False, allow_compute_mismatch: bool = False,
               max_output_bytes: int = container.MAX_OUTPUT_BYTES) -> bytes:
    """Inverse of compress(); raises CompressionError / ContainerError naming the cause, never wrong output."""
    return decompress_with_stats(blob, model, progress=progress, allow_compute_mismatch=allow_compute_mismatch,
                                 max_output_bytes=max_output_bytes)[0]


class NeuralCompressor:
    """blm as a registry compressor: ``compress(data) -> bytes`` and ``decompress(blob) -> bytes``.

    ``model`` None is the context mixer alone (``mixing`` must then be "cm"). ``shared_bytes`` is what the
    comparison charges for the model: 2 bytes per parameter (0 without one).
    """

    def __init__(self, model=None, name: str = "blm", numerics: str = "portable", mixing: str = "cm",
                 segments: int | None = None, segment_bytes: int | None = None, progress: bool = False,
                 trace: bool = False):
        self.model, self.name, self.numerics, self.mixing = model, name, numerics, mixing
        self.segments, self.segment_bytes = segments, segment_bytes
        self.progress, self.trace = progress, trace  # trace: last_stats.trace holds the per-byte trace
        self.last_stats: CompressionStats | None = None
        self.num_params = model.num_params() if model is not None else 0
        self.shared_bytes = BYTES_PER_PARAM * self.num_params  # the model, shipped ahead of time
        if model is None:
            self.knows = "nothing: the file alone (context mixing, no model)"
        else:
            self.knows = (f"its model ({self.num_params:,} parameters, trained on the training split; not counted)"
                          + ("" if mixing == "none" else " and the file so far (context mixing)"))

    def compress(self, data: bytes) -> bytes:
        blob, self.last_stats = compress_with_stats(data, self.model, numerics=self.numerics, mixing=self.mixing,
                                                    segments=self.segments, segment_bytes=self.segment_bytes,
                                                    progress=self.progress, trace=self.trace)
        return blob

    def decompress(self, blob: bytes) -> bytes:
        return decompress(blob, self.model, progress=self.progress)
