"""Per-byte bits: the one place that turns a model's predictions into bits.

* ``bits_per_byte(logits, targets)``: mean cross-entropy in bits (the training loss, reported).
* ``sum_bits(logits, targets)``: total bits of the targets (evaluation sums these exactly over shards).
* ``byte_log_probs(model, data)``: for every byte t of one stream, the log-distribution that predicted
  it, given ``data[:t]`` through the same sliding window of ``block_size`` bytes the rolling KV cache
  uses. Byte 0 has no context: it is predicted by the uniform distribution (8 bits), which is what a
  coder that starts from nothing pays for it.
* ``analyze_bytes`` (surprisal, entropy and top guesses of every byte: notebooks 03 and 05) and
  ``window_bits`` (the model's ideal code length of a segmented file, a fast estimate of what the
  compressor will write) are both built on ``byte_log_probs``.

The coder's own ideal length, under the *integer* frequencies it is actually given, is
``blm_lab.codec.coder.ideal_bits``; the two agree up to the quantisation of probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .data import as_byte_array, byte_label

__all__ = ["LN2", "UNIFORM_BITS", "TOP_K", "bits_per_byte", "sum_bits", "byte_log_probs", "ByteAnalysis", "analyze_bytes",
           "next_byte_table", "window_bits"]

LN2 = math.log(2.0)
UNIFORM_BITS = 8.0  # surprisal and entropy of the uniform distribution over 256 byte values


def bits_per_byte(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of next-byte predictions in bits per byte (the seed's train.py loss helper)."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1)) / LN2


def sum_bits(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Total bits of ``targets`` under ``logits`` (summed, not averaged), as a Python float."""
    nats = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), reduction="sum")
    return nats.item() / LN2


@torch.no_grad()
def byte_log_probs(model, idx: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """(N, 256) float32 natural-log distributions for the bytes ``idx`` (N,): row t predicts byte t.

    Row 0 is uniform; row t > 0 comes from ``model.window_logits`` at position t - 1, the same
    sliding window of block_size bytes the rolling KV cache keeps.
    """
    n = idx.shape[0]
    uniform = torch.full((1, 256), -math.log(256), device=idx.device)
    if n <= 1:
        return uniform[:n]
    logits = model.window_logits(idx[None, :-1], chunk=chunk)[0]  # (N-1, 256): row t predicts byte t + 1
    return torch.cat([uniform, F.log_softmax(logits.float(), dim=-1)], dim=0)


TOP_K = 16  # guesses kept per byte: what the views show, at 5 bytes each instead of 1 KiB for all 256


@dataclass
class ByteAnalysis:
    """Per-byte predictions of a model over ``data`` (N bytes). Row t is about byte t.

    The distribution that predicted byte t, given ``data[:t]`` (at most ``block_size`` bytes of it), is
    kept as what the views need, not all 256 probabilities (1 KiB a byte): ``surprisal[t] = -log2 p(data[t])``
    and ``entropy[t]`` (bits), the ``top_k`` most probable values ``top_bytes[t]`` with their
    probabilities ``top_probs[t]`` (descending), and ``rank[t]``, the actual byte's rank (1 = the
    model's first guess; ties count in its favour). About 100 bytes a byte at the default top_k.
    Byte 0 is predicted by the uniform distribution (8 bits, 8 bits). ``mean_bits_per_byte`` is the
    mean surprisal over all N bytes, byte 0 included: the size of ``data`` coded with this model, per
    byte (0 for no bytes).
    """

    data: bytes
    surprisal: np.ndarray  # (N,) float64, bits
    entropy: np.ndarray  # (N,) float64, bits
    top_bytes: np.ndarray  # (N, K) uint8, most probable first
    top_probs: np.ndarray  # (N, K) float32
    rank: np.ndarray  # (N,) int16, 1..256
    mean_bits_per_byte: float
    block_size: int = 0  # the model's context length

    def __len__(self) -> int:
        return len(self.data)

    @property
    def top_k(self) -> int:
        return int(self.top_bytes.shape[1])

    @property
    def byte_values(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype=np.uint8)

    @property
    def total_bits(self) -> float:
        return float(self.surprisal.sum())

    @property
    def entropy_nats(self) -> np.ndarray:
        """The entropies in nats, as BLT's patching rules take them (``blm_lab.patching``)."""
        return self.entropy * LN2

    def to_frame(self) -> pd.DataFrame:
        """One row per byte: position, byte, char (readable label), surprisal, entropy (bits)."""
        values = self.byte_values
        return pd.DataFrame({
            "position": np.arange(len(values)),
            "byte": values,
            "char": [byte_label(b) for b in values],
            "surprisal": self.surprisal,
            "entropy": self.entropy,
        })


def _summarise(log_probs: torch.Tensor, targets: torch.Tensor, top_k: int):
    """(surprisal bits, entropy bits, top bytes, top probs, rank) of rows of log-distributions (Q, 256)."""
    actual = log_probs.gather(1, targets[:, None])  # (Q, 1)
    surprisal = -actual[:, 0] / LN2
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1) / LN2
    top_values, top_bytes = log_probs.topk(top_k, dim=-1)  # (Q, K) descending
    rank = (log_probs > actual).sum(dim=-1) + 1
    return (surprisal.double().cpu().numpy(), entropy.double().clamp_(min=0.0).cpu().numpy(),
            top_bytes.to(torch.uint8).cpu().numpy(), top_values.exp().float().cpu().numpy(),
            rank.to(torch.int16).cpu().numpy())


def analyze_bytes(model, data, max_bytes: int | None = None, device=None, chunk: int | None = None,
                  top_k: int = TOP_K) -> ByteAnalysis:
    """Run the model over ``data`` (one stream) and collect per-byte surprisal, entropy and top guesses.

    data: bytes, str (UTF-8) or a uint8 array; only the first ``max_bytes`` are used when given; no
    bytes give an empty analysis. device: where to run; default the model's own device (the model is
    moved there otherwise). chunk: predicted positions per model pass (default 8 * block_size); each
    pass re-reads the ``n_layer * (block_size - 1)`` bytes of history the sliding window needs, and
    its memory grows with the square of the two. Only a pass's distributions are held at once, so
    memory is the kept figures (about 100 bytes a byte) plus one pass.
    The model runs in eval mode under ``torch.no_grad``; its train/eval mode is restored afterwards.
    """
    x = as_byte_array(data)
    if max_bytes is not None:
        x = x[:max(0, int(max_bytes))]
    n = x.shape[0]
    top_k = max(1, min(256, int(top_k)))
    block_size = int(getattr(getattr(model, "config", None), "block_size", 0))
    param = next(model.parameters())
    if device is not None and torch.device(device) != param.device:
        model.to(device)
        param = next(model.parameters())
    idx = torch.from_numpy(x.astype(np.int64)).to(param.device)  # (N,)
    surprisal, entropy = np.empty(n), np.empty(n)
    top_bytes, top_probs = np.empty((n, top_k), np.uint8), np.empty((n, top_k), np.float32)
    rank = np.empty(n, np.int16)
    if n:  # byte 0: the uniform distribution
        first = _summarise(torch.full((1, 256), -math.log(256), device=param.device), idx[:1], top_k)
        for out, value in zip((surprisal, entropy, top_bytes, top_probs, rank), first):
            out[:1] = value
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            piece = chunk or 8 * max(1, block_size)
            history = model.config.n_layer * (block_size - 1) if n > 1 else 0
            for s in range(1, n, piece):  # bytes s..e-1, predicted by the logits at s-1..e-2
                e = min(n, s + piece)
                ctx = max(0, s - 1 - history)
                logits = model.window_logits(idx[None, ctx:e - 1], chunk=e - 1 - ctx)[0, s - 1 - ctx:]  # (e-s, 256)
                parts = _summarise(F.log_softmax(logits.float(), dim=-1), idx[s:e], top_k)
                for out, value in zip((surprisal, entropy, top_bytes, top_probs, rank), parts):
                    out[s:e] = value
    finally:
        model.train(was_training)
    return ByteAnalysis(data=x.tobytes(), surprisal=surprisal, entropy=entropy, top_bytes=top_bytes,
                        top_probs=top_probs, rank=rank, mean_bits_per_byte=float(surprisal.mean()) if n else 0.0,
                        block_size=block_size)


def _check_position(analysis: ByteAnalysis, position: int) -> int:
    position = int(position)
    if not 0 <= position < len(analysis):
        raise IndexError(f"position {position} is outside the analysed bytes 0..{len(analysis) - 1}")
    return position


def next_byte_table(analysis: ByteAnalysis, position: int, top_k: int = 20) -> pd.DataFrame:
    """The ``top_k`` most probable values for byte ``position`` (at most the analysis's ``top_k``):
    byte, label, probability, bits, is_actual."""
    position = _check_position(analysis, position)
    top_k = max(1, min(analysis.top_k, int(top_k)))
    order = analysis.top_bytes[position, :top_k].astype(np.int64)
    p = analysis.top_probs[position, :top_k].astype(np.float64)
    return pd.DataFrame({
        "byte": order,
        "label": [byte_label(b) for b in order],
        "probability": p,
        "bits": -np.log2(np.maximum(p, 1e-300)),
        "is_actual": order == analysis.data[position],
    })


@torch.no_grad()
def window_bits(data: bytes, model, segment_bytes: int) -> float:
    """The model's ideal code length in bits of ``data`` cut into segments of ``segment_bytes``, each
    coded from an empty context (its first byte uniform): -sum log2 p(x) with full-sequence passes.

    A fast estimate of what the lock-step compressor spends (it agrees with the coder's ideal bits up
    to the quantisation of probabilities); it never produces a code.
    """
    p = next(model.parameters())
    total = 0.0
    for start in range(0, len(data), segment_bytes):
        idx = torch.from_numpy(as_byte_array(data[start:start + segment_bytes]).astype(np.int64)).to(p.device)
        log_probs = byte_log_probs(model, idx)
        total -= log_probs.gather(1, idx[:, None]).sum().item() / LN2
    return total
