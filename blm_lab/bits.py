"""Where the bits go: per-byte code lengths summed by kind of byte, by position in a segment, along the
file, over the costliest spans, one compressor against another and one checkpoint against another.

Every function takes the bytes and one bits value per byte, so it reads a real compression's
``codec.trace.ByteTrace`` (``coded_bits``: what the coder spent) and a model's own surprisal
(``scoring.ByteAnalysis.surprisal``) alike. Notebook 05 draws them (``viz.figures``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import CheckpointError, ConfigError

__all__ = ["BYTE_KINDS", "MARKUP", "byte_kinds", "bits_by_kind", "bits_by_position", "cumulative_bits",
           "costliest_spans", "methods_frame", "compare_bits", "check_vocabulary", "BitSource", "bit_sources",
           "kind_table", "position_table", "compressor_traces"]

BYTE_KINDS = ("letter", "digit", "whitespace", "punctuation", "markup", "non-ASCII or binary")
MARKUP = b"<>&=/\\{}[]#|@^~`$_*"  # what HTML, XML, TeX, wiki and Markdown syntax is written with


def _as_bytes(data) -> np.ndarray:
    """bytes or a uint8 array (a trace's ``data``) as a 1-D uint8 array; without ``data.as_byte_array``'s torch import."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8).reshape(-1)


def _kind_table() -> np.ndarray:
    kinds = np.full(256, 5, dtype=np.int8)  # bytes >= 0x80 and control bytes other than whitespace
    for b in range(0x21, 0x7F):
        kinds[b] = 3
    for b in MARKUP:
        kinds[b] = 4
    kinds[np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", np.uint8)] = 0
    kinds[np.frombuffer(b"0123456789", np.uint8)] = 1
    kinds[np.frombuffer(b" \t\n\r\x0b\x0c", np.uint8)] = 2
    return kinds


KIND_OF_BYTE = _kind_table()  # (256,) int8 index into BYTE_KINDS


def byte_kinds(data) -> np.ndarray:
    """(N,) int8: each byte's kind, an index into ``BYTE_KINDS`` (ASCII letters, digits, whitespace,
    punctuation other than ``MARKUP``, ``MARKUP``, everything else)."""
    return KIND_OF_BYTE[_as_bytes(data)]


def _bits(data, bits) -> tuple[np.ndarray, np.ndarray]:
    x = _as_bytes(data)
    b = np.asarray(bits, dtype=np.float64).reshape(-1)
    if b.shape[0] != x.shape[0]:
        raise ConfigError(f"{b.shape[0]} bit values for {x.shape[0]} bytes; pass one value per byte of the same data")
    return x, b


def bits_by_kind(data, bits) -> pd.DataFrame:
    """One row per kind of byte: bytes, bits, bits_per_byte, share_of_bytes and share_of_bits."""
    x, b = _bits(data, bits)
    kinds = byte_kinds(x)
    count = np.bincount(kinds, minlength=len(BYTE_KINDS))
    total = np.bincount(kinds, weights=b, minlength=len(BYTE_KINDS))
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame({
            "kind": BYTE_KINDS, "bytes": count, "bits": total,
            "bits_per_byte": np.where(count > 0, total / np.maximum(count, 1), np.nan),
            "share_of_bytes": count / max(1, x.shape[0]),
            "share_of_bits": total / b.sum() if b.sum() > 0 else np.zeros(len(BYTE_KINDS))})


def bits_by_position(position, bits) -> pd.DataFrame:
    """Bits by position within a segment, in doubling bins (0, 1, 2-3, 4-7, ...): the warm-up cost.

    ``position`` (N,) is where each byte sits in the stream that coded it (``ByteTrace.position``;
    ``np.arange(N)`` for one stream). Columns: first, last, bytes, bits, bits_per_byte.
    """
    pos = np.asarray(position, dtype=np.int64).reshape(-1)
    b = np.asarray(bits, dtype=np.float64).reshape(-1)
    if pos.shape != b.shape:
        raise ConfigError(f"{pos.shape[0]} positions for {b.shape[0]} bit values; pass one of each per byte")
    if pos.shape[0] == 0:
        return pd.DataFrame(columns=["first", "last", "bytes", "bits", "bits_per_byte"])
    bin_of = np.where(pos > 0, np.floor(np.log2(np.maximum(pos, 1))).astype(np.int64) + 1, 0)  # 0 | 1 | 2-3 | 4-7
    count = np.bincount(bin_of)
    total = np.bincount(bin_of, weights=b)
    first = np.array([0] + [2 ** (k - 1) for k in range(1, count.shape[0])])
    last = np.array([0] + [2 ** k - 1 for k in range(1, count.shape[0])])
    keep = count > 0
    return pd.DataFrame({"first": first[keep], "last": last[keep], "bytes": count[keep], "bits": total[keep],
                         "bits_per_byte": total[keep] / count[keep]})


def cumulative_bits(bits) -> np.ndarray:
    """(N,) running total of bits along the file (its last value is the total)."""
    return np.cumsum(np.asarray(bits, dtype=np.float64).reshape(-1))


def _text(x: np.ndarray) -> str:
    return x.tobytes().decode("utf-8", errors="replace")


def costliest_spans(data, bits, width: int = 32, count: int = 10, context: int = 24) -> pd.DataFrame:
    """The ``count`` non-overlapping ``width``-byte spans with the most bits, costliest first.

    Columns: start, end (exclusive), bits, bits_per_byte, and the text before, of and after the span
    (``context`` bytes each side, UTF-8 with U+FFFD for undecodable bytes). A text shorter than
    ``width`` is one span. Ties go to the earliest span.
    """
    x, b = _bits(data, bits)
    n = x.shape[0]
    width = max(1, min(int(width), n)) if n else 1
    columns = ["start", "end", "bits", "bits_per_byte", "before", "span", "after"]
    if n == 0 or count < 1:
        return pd.DataFrame(columns=columns)
    csum = np.concatenate(([0.0], np.cumsum(np.nan_to_num(b))))
    window = csum[width:] - csum[:-width]  # (n - width + 1,) bits of the span starting at each offset
    order = np.argsort(-window, kind="stable")
    taken = np.zeros(n, dtype=bool)
    rows = []
    for start in order:  # greedy: the costliest window that does not overlap one already taken
        if taken[start] or taken[start + width - 1]:
            continue
        taken[start:start + width] = True
        s, e = int(start), int(start) + width
        rows.append({"start": s, "end": e, "bits": float(window[start]), "bits_per_byte": float(window[start]) / width,
                     "before": _text(x[max(0, s - context):s]), "span": _text(x[s:e]), "after": _text(x[e:e + context])})
        if len(rows) == count:
            break
    return pd.DataFrame(rows, columns=columns)


def methods_frame(traces) -> pd.DataFrame:
    """Byte by byte, the bits each compression spent on the same data: offset, byte, kind, then one
    column per trace (``{name: ByteTrace}``, e.g. blm, model alone, cm alone)."""
    traces = dict(traces)
    if not traces:
        raise ConfigError("no traces to compare; pass at least one ByteTrace")
    first = next(iter(traces.values()))
    for name, trace in traces.items():
        if not np.array_equal(trace.data, first.data):
            raise ConfigError(f"trace {name!r} is of other data ({len(trace.data)} bytes) than the first "
                              f"({len(first.data)} bytes); compare traces of the same file")
    frame = pd.DataFrame({"offset": np.arange(len(first.data)), "byte": first.data,
                          "kind": np.asarray(BYTE_KINDS, dtype=object)[byte_kinds(first.data)]})
    for name, trace in traces.items():
        frame[name] = trace.coded_bits
    return frame


def compare_bits(data, bits_a, bits_b, names=("a", "b")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One model (or compressor) against another on the same bytes.

    Returns (per byte: offset, byte, kind, bits of each, ``difference`` = b - a; positive where a
    spent less), and (per kind plus an "all" row: bytes where each wins, the bits each saved there,
    and the net difference).
    """
    x, a = _bits(data, bits_a)
    _, b = _bits(data, bits_b)
    name_a, name_b = names
    kinds = np.asarray(BYTE_KINDS, dtype=object)[byte_kinds(x)]
    diff = b - a
    per_byte = pd.DataFrame({"offset": np.arange(x.shape[0]), "byte": x, "kind": kinds, name_a: a, name_b: b,
                             "difference": diff})
    rows = []
    for kind in (*BYTE_KINDS, "all"):
        sel = slice(None) if kind == "all" else kinds == kind
        d = diff[sel]
        rows.append({"kind": kind, "bytes": int(d.shape[0]), f"{name_a}_wins": int((d > 0).sum()),
                     f"{name_b}_wins": int((d < 0).sum()), f"{name_a}_saves_bits": float(d[d > 0].sum()),
                     f"{name_b}_saves_bits": float(-d[d < 0].sum()), "net_bits": float(d.sum())})
    return per_byte, pd.DataFrame(rows)


def check_vocabulary(config_a, config_b, names=("the run's checkpoint", "compare_checkpoint")) -> None:
    """Two models compare byte by byte only over one vocabulary; block size and shape may differ.

    Raises CheckpointError naming both vocabulary sizes otherwise (configs are objects or dicts).
    """
    def vocab(config):
        return config["vocab_size"] if isinstance(config, dict) else config.vocab_size

    va, vb = vocab(config_a), vocab(config_b)
    if va != vb:
        raise CheckpointError(f"{names[1]} has a vocabulary of {vb} symbols, {names[0]} {va}; per-byte bits compare "
                              "only between models of one vocabulary: pick a checkpoint of the same vocab_size")


@dataclass
class BitSource:
    """One account of where bits went: a compression's trace or a model's own surprisal, over ``data``."""

    name: str
    data: np.ndarray  # (N,) uint8
    bits: np.ndarray  # (N,) float64
    position: np.ndarray  # (N,) position of each byte within the stream that coded it

    @property
    def bits_per_byte(self) -> float:
        return float(self.bits.sum() / self.data.shape[0]) if self.data.shape[0] else 0.0


def bit_sources(traces, analysis=None, analysis_name: str = "model surprisal (float)") -> list[BitSource]:
    """The traces (``{name: ByteTrace}``, what the coder spent) as sources, else the model's own surprisal
    from ``analysis`` (one stream from its first byte); an empty list when there is neither."""
    out = [BitSource(name, np.asarray(t.data, np.uint8), np.asarray(t.coded_bits, np.float64),
                     np.asarray(t.position)) for name, t in dict(traces).items()]
    if not out and analysis is not None and len(analysis):
        out.append(BitSource(analysis_name, analysis.byte_values, analysis.surprisal, np.arange(len(analysis))))
    return out


def kind_table(sources) -> pd.DataFrame:
    """Bits per byte by kind of byte (rows, plus "all") for each source (columns), and the share of bytes."""
    sources = list(sources)
    if not sources:
        return pd.DataFrame()
    columns = {}
    for source in sources:
        table = bits_by_kind(source.data, source.bits).set_index("kind")
        columns[source.name] = [*table["bits_per_byte"], source.bits_per_byte]
    first = bits_by_kind(sources[0].data, sources[0].bits)
    frame = pd.DataFrame(columns, index=[*BYTE_KINDS, "all"])
    frame.insert(0, "share_of_bytes", [*first["share_of_bytes"], 1.0])
    frame.index.name = "kind"
    return frame


def position_table(sources) -> pd.DataFrame:
    """Bits per byte by position within a segment (doubling bins) for each source: the warm-up cost."""
    frames = []
    for source in sources:
        table = bits_by_position(source.position, source.bits)
        table.insert(0, "source", source.name)
        frames.append(table)
    if not frames:
        return pd.DataFrame()
    both = pd.concat(frames, ignore_index=True)
    both["positions"] = [f"{a}" if a == b else f"{a}-{b}" for a, b in zip(both["first"], both["last"])]
    return both.pivot_table(index=["first", "positions"], columns="source", values="bits_per_byte",
                            sort=True).reset_index(level=0, drop=True)


def compressor_traces(compressors) -> dict:
    """``{name: ByteTrace}`` of the registry compressors (``codec.neural.NeuralCompressor``) whose last
    compression recorded a trace (``compress_with_stats(..., trace=True)``), in the order given; {} when
    none did, as before the codec records traces."""
    out = {}
    for compressor in compressors:
        trace = getattr(getattr(compressor, "last_stats", None), "trace", None)
        if trace is not None:
            out[compressor.name] = trace
    return out
