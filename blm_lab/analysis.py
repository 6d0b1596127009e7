"""Looking at bytes: histograms, empirical entropy, hex dumps, and a model's per-byte surprisal.

Two kinds of analysis live here, for notebooks 01 (data) and 03 (entropy):

* Statistics of the data alone: ``byte_histogram``, ``empirical_entropy`` (the plug-in entropy of
  an order-k Markov model fitted to the data itself) and ``entropy_table``, ``preview`` (an
  ``xxd``-style dump) and ``text_preview``.
* What a model thinks of each byte: ``analyze_bytes`` runs ``BytesGPT.window_logits`` once over the
  whole input and returns a ``ByteAnalysis`` with the surprisal, the predictive entropy and the full
  predictive distribution of every byte; ``surprisal_html``, ``plot_surprisal``,
  ``plot_surprisal_vs_entropy``, ``plot_next_byte`` and ``plot_surprisal_text`` draw it.

Conventions
-----------
* Position ``t``'s distribution is the model's prediction of byte ``t`` given ``bytes[:t]`` (the
  logits at ``t - 1``), with the same sliding window of ``block_size`` bytes the rolling KV cache
  uses. Byte 0 has no context, so it is predicted by the uniform distribution: 8 bits of surprisal
  and 8 bits of entropy, which is what a coder that starts from nothing pays for it.
* Figures made here (``ax=None``) are created through pyplot and then closed to pyplot before
  they are returned: a notebook cell ending in the call shows the figure exactly once, and loops
  that make many figures do not pile them up. Use ``display(fig)`` to show one mid-cell. When an
  ``ax`` is passed, its figure is returned untouched.
"""

from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

__all__ = [
    "byte_histogram", "plot_byte_histogram", "empirical_entropy", "entropy_table", "preview", "text_preview",
    "ByteAnalysis", "analyze_bytes", "byte_label", "next_byte_table", "surprisal_html", "plot_surprisal",
    "plot_surprisal_vs_entropy", "plot_next_byte", "plot_surprisal_text", "save_figure",
]

PRINTABLE = range(0x20, 0x7F)  # printable ASCII, space included
UNIFORM_BITS = 8.0  # surprisal and entropy of the uniform distribution over 256 byte values
_LN2 = math.log(2.0)


def as_byte_array(data) -> np.ndarray:
    """bytes, bytearray, memoryview, str (UTF-8) or an integer array -> 1-D uint8 array (no copy when possible)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    arr = np.asarray(data)
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"byte values must lie in 0..255, got {arr.min()}..{arr.max()}")
        arr = arr.astype(np.uint8)
    return arr.reshape(-1)


def _new_axes(ax, figsize):
    """(fig, ax, owned): a fresh pyplot figure when ax is None (owned, closed before returning)."""
    if ax is not None:
        return ax.figure, ax, False
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")  # laid out at draw time, not at creation
    return fig, ax, True


def _finish(fig, owned: bool):
    if owned:
        plt.close(fig)  # the caller gets the figure; pyplot forgets it (no duplicate display in notebooks)
    return fig


# ----------------------------------------------------------------------------- statistics of the data

def byte_histogram(data) -> np.ndarray:
    """Counts of each byte value: int64 array (256,) that sums to len(data)."""
    return np.bincount(as_byte_array(data), minlength=256).astype(np.int64)


def plot_byte_histogram(data, ax=None, log: bool = True, title: str | None = None):
    """Bar chart of the 256 byte counts; printable ASCII in one colour, every other byte in another."""
    counts = byte_histogram(data)
    fig, ax, owned = _new_axes(ax, (10, 3.2))
    values = np.arange(256)
    printable = (values >= PRINTABLE.start) & (values < PRINTABLE.stop)
    ax.bar(values[printable], counts[printable], width=1.0, color="tab:blue", label="printable ASCII")
    ax.bar(values[~printable], counts[~printable], width=1.0, color="tab:orange", label="other bytes")
    if log:
        ax.set_yscale("log")  # zero counts simply have no bar
    ax.set_xlim(-1, 256)
    ax.set_xticks([0, 0x20, 0x41, 0x61, 0x7F, 0xC0, 0xFF], ["0x00", "' '", "'A'", "'a'", "0x7f", "0xc0", "0xff"])
    ax.set_xlabel("byte value")
    ax.set_ylabel("count" + (" (log)" if log else ""))
    n, distinct = int(counts.sum()), int((counts > 0).sum())
    ax.set_title(title or f"byte histogram: {n:,} bytes, {distinct} distinct values")
    ax.legend(loc="upper right", fontsize="small")
    return _finish(fig, owned)


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


# ----------------------------------------------------------------------------- what a model thinks of each byte

@dataclass
class ByteAnalysis:
    """Per-byte predictions of a model over ``data`` (N bytes). Row t is about byte t.

    ``probs[t]`` is the distribution that predicted byte t, given ``data[:t]`` (at most ``block_size``
    bytes of it); ``surprisal[t] = -log2 probs[t, data[t]]`` and ``entropy[t]`` is the entropy of
    ``probs[t]``, both in bits. Byte 0 is predicted by the uniform distribution (8 bits, 8 bits).
    ``mean_bits_per_byte`` is the mean surprisal over all N bytes, byte 0 included: the size of
    ``data`` coded with this model, per byte.
    """

    data: bytes
    surprisal: np.ndarray  # (N,) float64, bits
    entropy: np.ndarray  # (N,) float64, bits
    probs: np.ndarray  # (N, 256) float32
    mean_bits_per_byte: float
    block_size: int = 0  # the model's context length

    def __len__(self) -> int:
        return len(self.data)

    @property
    def byte_values(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype=np.uint8)

    @property
    def total_bits(self) -> float:
        return float(self.surprisal.sum())

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


def analyze_bytes(model, data, max_bytes: int | None = None, device=None, chunk: int | None = None) -> ByteAnalysis:
    """Run ``model.window_logits`` over ``data`` (one stream) and collect per-byte surprisal and entropy.

    data: bytes, str (UTF-8) or a uint8 array; only the first ``max_bytes`` are used when given.
    device: where to run; default the model's own device (the model is moved there otherwise).
    chunk: query positions per ``window_logits`` chunk (default 8 * block_size); memory grows with
    its square. ``probs`` keeps N x 256 float32 values (1 KiB per byte): cap ``max_bytes`` for big files.
    The model runs in eval mode under ``torch.no_grad``; its train/eval mode is restored afterwards.
    """
    x = as_byte_array(data)
    if max_bytes is not None:
        x = x[:max(0, int(max_bytes))]
    if x.shape[0] == 0:
        raise ValueError("no bytes to analyze: the input is empty; pass some text or a non-empty file")
    param = next(model.parameters())
    if device is not None and torch.device(device) != param.device:
        model.to(device)
        param = next(model.parameters())
    idx = torch.from_numpy(x.astype(np.int64))[None, :].to(param.device)  # (1, N)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model.window_logits(idx, chunk=chunk)[0]  # (N, 256): row t predicts byte t + 1
            log_probs = F.log_softmax(logits.float(), dim=-1)  # (N, 256)
            uniform = torch.full((1, log_probs.shape[1]), -math.log(log_probs.shape[1]), device=log_probs.device)
            log_probs = torch.cat([uniform, log_probs[:-1]], dim=0)  # (N, 256): row t predicts byte t
            surprisal = -log_probs.gather(1, idx[0, :, None])[:, 0] / _LN2  # (N,)
            entropy = -(log_probs.exp() * log_probs).sum(dim=-1) / _LN2  # (N,)
            probs = log_probs.exp()
    finally:
        model.train(was_training)
    surprisal = surprisal.double().cpu().numpy()
    entropy = entropy.double().clamp_(min=0.0).cpu().numpy()
    return ByteAnalysis(
        data=x.tobytes(),
        surprisal=surprisal,
        entropy=entropy,
        probs=probs.cpu().numpy().astype(np.float32, copy=False),
        mean_bits_per_byte=float(surprisal.mean()),
        block_size=int(getattr(getattr(model, "config", None), "block_size", 0)),
    )


def byte_label(value: int) -> str:
    """A readable label for a byte value: repr of the character for ASCII ('a', ' ', '\\n'), hex otherwise."""
    value = int(value)
    return repr(chr(value)) if value < 0x80 else f"0x{value:02x}"


def _check_position(analysis: ByteAnalysis, position: int) -> int:
    position = int(position)
    if not 0 <= position < len(analysis):
        raise IndexError(f"position {position} is outside the analysed bytes 0..{len(analysis) - 1}")
    return position


def next_byte_table(analysis: ByteAnalysis, position: int, top_k: int = 20) -> pd.DataFrame:
    """The ``top_k`` most probable values for byte ``position``: byte, label, probability, bits, is_actual."""
    position = _check_position(analysis, position)
    top_k = max(1, min(256, int(top_k)))
    p = analysis.probs[position]
    order = np.argsort(-p, kind="stable")[:top_k]
    actual = analysis.data[position]
    return pd.DataFrame({
        "byte": order,
        "label": [byte_label(b) for b in order],
        "probability": p[order].astype(np.float64),
        "bits": -np.log2(np.maximum(p[order].astype(np.float64), 1e-300)),
        "is_actual": order == actual,
    })


# ----------------------------------------------------------------------------- coloured text

_NEWLINE, _TAB = 0x0A, 0x09


def _glyph(value: int) -> str:
    """How a byte is drawn in the coloured views: itself if printable, an arrow for \\n and \\t, '·' otherwise."""
    if value in PRINTABLE:
        return chr(value)
    return {_NEWLINE: "↵", _TAB: "→"}.get(value, "·")


def _hex_colour(rgba) -> str:
    r, g, b = (int(round(255 * c)) for c in rgba[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def _text_colour(rgba) -> str:
    luminance = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
    return "#000" if luminance > 0.5 else "#fff"


def surprisal_html(analysis: ByteAnalysis, start: int = 0, length: int = 2000, vmax: float = 8.0, cmap: str = "Reds",
                   highlight: int | None = None) -> str:
    """Bytes ``start .. start + length`` as HTML: one ``<span>`` per byte, background darker = more surprising.

    Colour is ``cmap(surprisal / vmax)`` (clipped at vmax bits). Each span's title gives the position,
    the byte, its surprisal and the entropy of its prediction. Printable ASCII is shown (HTML-escaped),
    ``\\n`` as '↵' followed by a line break, ``\\t`` as '→', every other byte as '·'. The byte at
    ``highlight`` (if inside the window) is outlined and carries ``class="blm-hl"``. No other
    ``<span>`` is emitted, so the span count equals the number of bytes shown.
    """
    n = len(analysis)
    start = max(0, min(int(start), n))
    end = min(n, start + max(0, int(length)))
    vmax = max(float(vmax), 1e-9)
    colormap = plt.get_cmap(cmap)
    values = analysis.byte_values[start:end]
    rgba = colormap(np.clip(analysis.surprisal[start:end] / vmax, 0.0, 1.0))  # (L, 4)
    parts = []
    for i, (value, colour) in enumerate(zip(values, rgba)):
        t = start + i
        value = int(value)
        title = (f"#{t} byte 0x{value:02x} {byte_label(value)}: {analysis.surprisal[t]:.2f} bits, "
                 f"entropy {analysis.entropy[t]:.2f} bits")
        style = f"background:{_hex_colour(colour)};color:{_text_colour(colour)}"
        extra = ""
        if highlight is not None and t == int(highlight):
            style += ";outline:2px solid #1f77b4;outline-offset:0;position:relative;z-index:1"
            extra = ' class="blm-hl"'
        parts.append(f'<span{extra} data-pos="{t}" title="{html.escape(title, quote=True)}" style="{style}">'
                     f"{html.escape(_glyph(value))}</span>")
        if value == _NEWLINE:
            parts.append("<br>")
    scale = ", ".join(_hex_colour(colormap(f)) for f in np.linspace(0.0, 1.0, 6))
    header = (f'<div style="font-family:sans-serif;font-size:12px;margin-bottom:4px">bytes {start}&ndash;{max(start, end - 1)} '
              f"of {n} &middot; mean {analysis.mean_bits_per_byte:.3f} bits/byte &middot; colour: 0 "
              f'<b style="display:inline-block;width:120px;height:10px;vertical-align:middle;'
              f'background:linear-gradient(to right, {scale})"></b> {vmax:g} bits</div>')
    body = ('<div style="font-family:\'DejaVu Sans Mono\',Menlo,Consolas,monospace;font-size:13px;line-height:1.5;'
            f'white-space:pre-wrap;word-break:break-all">{"".join(parts)}</div>')
    return f'<div class="blm-surprisal">{header}{body}</div>'


def plot_surprisal_text(analysis: ByteAnalysis, start: int = 0, length: int = 1024, width: int = 64, vmax: float = 8.0,
                        cmap: str = "Reds", highlight: int | None = None, ax=None):
    """The coloured-text view as a static figure: rows of ``width`` bytes, each cell coloured by surprisal, glyph drawn on top."""
    n = len(analysis)
    start = max(0, min(int(start), n - 1))
    end = min(n, start + max(1, int(length)))
    width = max(1, int(width))
    rows = -(-(end - start) // width)
    grid = np.full(rows * width, np.nan)
    grid[:end - start] = analysis.surprisal[start:end]
    grid = grid.reshape(rows, width)  # (rows, width)
    fig, ax, owned = _new_axes(ax, (max(6.0, 0.16 * width + 1.5), max(1.5, 0.24 * rows + 1.0)))
    image = ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest")
    colormap = plt.get_cmap(cmap)
    for i, value in enumerate(analysis.byte_values[start:end]):
        r, c = divmod(i, width)
        colour = _text_colour(colormap(min(analysis.surprisal[start + i] / max(vmax, 1e-9), 1.0)))
        ax.text(c, r, _glyph(int(value)), ha="center", va="center", fontsize=7, family="DejaVu Sans Mono", color=colour,
                parse_math=False)
    if highlight is not None and start <= int(highlight) < end:
        r, c = divmod(int(highlight) - start, width)
        ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="tab:blue", linewidth=2))
    ax.set_xticks([])
    ticks = np.arange(rows)
    step = max(1, rows // 16)
    ax.set_yticks(ticks[::step], [str(start + r * width) for r in ticks[::step]])
    ax.set_ylabel("offset")
    ax.set_title(f"surprisal of bytes {start}-{end - 1} (darker = more surprising, scale 0-{vmax:g} bits)")
    fig.colorbar(image, ax=ax, label="bits", fraction=0.03, pad=0.01)
    return _finish(fig, owned)


# ----------------------------------------------------------------------------- plots

def _rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    return pd.Series(values).rolling(max(1, int(window)), min_periods=1).mean().to_numpy()


def plot_surprisal(analysis: ByteAnalysis, window: int = 64, ax=None):
    """Surprisal of every byte (thin), its rolling mean over ``window`` bytes (thick), and the entropy's rolling mean."""
    fig, ax, owned = _new_axes(ax, (10, 3.5))
    t = np.arange(len(analysis))
    ax.plot(t, analysis.surprisal, lw=0.5, alpha=0.45, color="tab:red", label="surprisal")
    ax.plot(t, _rolling_mean(analysis.surprisal, window), lw=2.0, color="tab:red", label=f"surprisal, mean of {window}")
    ax.plot(t, _rolling_mean(analysis.entropy, window), lw=1.5, ls="--", color="tab:blue", label=f"entropy, mean of {window}")
    ax.axhline(analysis.mean_bits_per_byte, lw=0.8, color="0.3", ls=":", label=f"overall {analysis.mean_bits_per_byte:.3f} bits/byte")
    ax.set_xlim(0, max(1, len(analysis) - 1))
    ax.set_ylim(0, max(UNIFORM_BITS, float(np.nanmax(analysis.surprisal)) * 1.05))
    ax.set_xlabel("byte position")
    ax.set_ylabel("bits")
    ax.set_title(f"per-byte surprisal over {len(analysis):,} bytes")
    ax.legend(loc="upper right", fontsize="small", ncol=2)
    return _finish(fig, owned)


def plot_surprisal_vs_entropy(analysis: ByteAnalysis, ax=None, skip_first: bool = True):
    """Each byte as a point: entropy of its prediction (x) against its surprisal (y).

    On average surprisal equals entropy when the model is calibrated; points far above the diagonal
    are confident mistakes, points near 0 on both axes are bytes the model was sure of and right about.
    Byte 0 (uniform prediction) is left out unless ``skip_first`` is False.
    """
    fig, ax, owned = _new_axes(ax, (5, 4.5))
    s = slice(1 if skip_first and len(analysis) > 1 else 0, None)
    entropy, surprisal = analysis.entropy[s], analysis.surprisal[s]
    ax.scatter(entropy, surprisal, s=4, alpha=0.35, color="tab:purple", rasterized=True, linewidths=0)
    top = max(UNIFORM_BITS, float(np.nanmax(surprisal)) if surprisal.size else 0.0)
    ax.plot([0, top], [0, top], color="0.3", lw=1, ls="--", label="surprisal = entropy")
    ax.set_xlim(0, UNIFORM_BITS * 1.02)
    ax.set_ylim(0, top * 1.02)
    ax.set_xlabel("entropy of the prediction (bits)")
    ax.set_ylabel("surprisal of the actual byte (bits)")
    ax.set_title(f"mean surprisal {surprisal.mean():.3f}, mean entropy {entropy.mean():.3f} bits")
    ax.legend(loc="upper left", fontsize="small")
    return _finish(fig, owned)


def plot_next_byte(analysis: ByteAnalysis, position: int, top_k: int = 20, ax=None, context: int = 24):
    """Bar chart of the ``top_k`` most probable values for byte ``position``; the actual byte's bar is highlighted.

    The title shows the last ``context`` bytes before the position, the actual byte, its surprisal and
    the entropy; when the actual byte is not among the top_k its rank and probability are noted.
    ``ax.patches`` holds exactly ``top_k`` bars.
    """
    position = _check_position(analysis, position)
    table = next_byte_table(analysis, position, top_k)
    fig, ax, owned = _new_axes(ax, (max(5.0, 0.32 * len(table) + 2.0), 3.6))
    colours = np.where(table["is_actual"], "tab:orange", "tab:blue")
    ax.bar(np.arange(len(table)), table["probability"], color=colours)
    ax.set_xticks(np.arange(len(table)), table["label"], rotation=90 if len(table) > 12 else 0, fontsize=8,
                  parse_math=False)
    ax.set_ylim(0, min(1.0, float(table["probability"].max()) * 1.15 + 1e-6))
    ax.set_ylabel("probability")
    actual = analysis.data[position]
    before = analysis.data[max(0, position - int(context)):position].decode("utf-8", errors="replace")
    ax.set_title(f"byte {position}: after {before!r}\nactual {byte_label(actual)}: {analysis.surprisal[position]:.2f} bits, "
                 f"entropy {analysis.entropy[position]:.2f} bits", fontsize=9, parse_math=False)
    if not table["is_actual"].any():
        p = analysis.probs[position]
        rank = int((p > p[actual]).sum()) + 1
        ax.text(0.99, 0.95, f"actual {byte_label(actual)} not in top {len(table)}: rank {rank}, p = {p[actual]:.2e}",
                transform=ax.transAxes, ha="right", va="top", fontsize=8, color="tab:orange", parse_math=False)
    return _finish(fig, owned)


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG at 120 dpi, creating parent directories; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path
