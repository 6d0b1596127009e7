"""Statistics of bytes alone, before any model: histograms, empirical entropy, hex and text previews.

Notebook 01 uses these to show what is about to be modelled. What a *model* thinks of each byte is
``blm_lab.scoring``; every figure is drawn by ``blm_lab.viz``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .data import PRINTABLE, as_byte_array

__all__ = ["byte_histogram", "empirical_entropy", "entropy_table", "preview", "text_preview"]


def byte_histogram(data) -> np.ndarray:
    """Counts of each byte value: int64 array (256,) that sums to len(data)."""
    return np.bincount(as_byte_array(data), minlength=256).astype(np.int64)


def _context_ids(x: np.ndarray, order: int) -> np.ndarray:
    """Dense integer id of the ``order`` bytes before each position t in [order, N): (N - order,) int64."""
    n = x.shape[0] - order
    if order <= 7:  # the context packs into 56 bits of an int64
        ctx = np.zeros(n, dtype=np.int64)
        for j in range(order):
            ctx = (ctx << 8) | x[j:j + n].astype(np.int64)
        _, ids = np.unique(ctx, return_inverse=True)
        return ids.reshape(-1)
    windows = np.lib.stride_tricks.sliding_window_view(x[:-1], order)  # (n, order)
    _, ids = np.unique(windows, axis=0, return_inverse=True)
    return ids.reshape(-1)


def _markov_entropy(data, order: int) -> tuple[float, int]:
    """(bits per byte, distinct contexts) of the plug-in order-k estimate; see ``empirical_entropy``."""
    if order < 0:
        raise ValueError(f"order must be >= 0, got {order}")
    x = as_byte_array(data)
    if x.shape[0] <= order:
        raise ValueError(f"data has {x.shape[0]} bytes, too few for an order-{order} model (needs more than {order}); "
                         "pass more data or a lower order")
    symbols = x[order:].astype(np.int64)  # (n,)
    ctx = _context_ids(x, order)  # (n,) dense ids
    joint, joint_counts = np.unique(ctx * 256 + symbols, return_counts=True)
    ctx_counts = np.bincount(ctx)  # (contexts,)
    n = symbols.shape[0]
    # H(X | C) = sum_{c,x} p(c,x) log2 (n(c) / n(c,x))
    bits = float(np.sum(joint_counts * np.log2(ctx_counts[joint >> 8] / joint_counts)) / n)
    return max(bits, 0.0), int(ctx_counts.shape[0])


def empirical_entropy(data, order: int = 0) -> float:
    """Bits per byte of an order-k Markov model fitted to ``data`` itself: the plug-in H(X_t | X_{t-k..t-1}).

    Counts come from positions t >= order (each with its k preceding bytes), so the estimate is the
    conditional entropy of the data's own empirical distribution. It is a lower bound for what the
    same model could achieve on unseen data: at high orders most contexts are seen once and the
    estimate falls towards 0 (over-fitting), so read it next to the number of contexts seen.
    """
    return _markov_entropy(data, order)[0]


def entropy_table(data, orders=(0, 1, 2, 3)) -> pd.DataFrame:
    """One row per order: ``order``, ``bits_per_byte`` (``empirical_entropy``) and ``contexts`` (distinct ones seen)."""
    rows = []
    for order in orders:
        bits, contexts = _markov_entropy(data, int(order))
        rows.append({"order": int(order), "bits_per_byte": bits, "contexts": contexts})
    return pd.DataFrame(rows, columns=["order", "bits_per_byte", "contexts"])


def preview(data, start: int = 0, length: int = 256) -> str:
    """A hex dump like ``xxd``: one line per 16 bytes, ``offset: hex in pairs  ascii`` ('.' for non-printable).

    Offsets are positions in ``data`` (so a dump from ``start`` reads the same as xxd -s start).
    """
    x = as_byte_array(data)
    start = max(0, int(start))
    chunk = x[start:start + max(0, int(length))]
    lines = []
    for off in range(0, chunk.shape[0], 16):
        row = chunk[off:off + 16].tobytes()
        hexed = row.hex()
        groups = " ".join(hexed[i:i + 4] for i in range(0, len(hexed), 4))
        text = "".join(chr(b) if b in PRINTABLE else "." for b in row)
        lines.append(f"{start + off:08x}: {groups:<39}  {text}")
    return "\n".join(lines)


def text_preview(data, n: int = 1000) -> str:
    """The first ``n`` bytes as text (UTF-8, undecodable bytes shown as U+FFFD)."""
    return as_byte_array(data)[:max(0, int(n))].tobytes().decode("utf-8", errors="replace")

