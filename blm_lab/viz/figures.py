"""Every figure the workbench draws, under one rule.

The rule: a function called without ``ax`` makes its own figure through pyplot and closes it to
pyplot before returning it, so a notebook cell ending in the call shows the figure exactly once
and loops that make many figures do not pile them up (``display(fig)`` shows one mid-cell). Called
with an ``ax``, it draws there and returns that figure untouched. ``save_figure`` writes a PNG;
``show_and_save`` writes it and returns the figure for the cell to show.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..analysis import byte_histogram
from ..data import PRINTABLE, byte_label
from ..files import atomic_write
from ..scoring import UNIFORM_BITS, ByteAnalysis, _check_position, next_byte_table
from .style import glyph, text_colour

__all__ = ["new_axes", "finish", "save_figure", "show_and_save", "plot_byte_histogram", "plot_surprisal",
           "plot_surprisal_vs_entropy", "plot_next_byte", "plot_surprisal_text", "plot_bits_per_byte",
           "plot_sweep", "LiveLossPlot", "plot_patches", "plot_bits_along", "plot_bits_by_kind",
           "plot_checkpoint_difference"]


def new_axes(ax=None, figsize=(8, 4)):
    """(fig, ax, owned): a fresh pyplot figure when ax is None (owned: ``finish`` closes it to pyplot)."""
    if ax is not None:
        return ax.get_figure(root=True), ax, False
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")  # laid out at draw time, not at creation
    return fig, ax, True


def finish(fig, owned: bool = True):
    """Close an owned figure to pyplot (the caller keeps it) and return it."""
    if owned:
        plt.close(fig)
    return fig


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG at 120 dpi, creating parent directories; returns the path."""
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))


def show_and_save(fig, path: str | os.PathLike):
    """Write ``fig`` to ``path`` (PNG) and return it, closed to pyplot, so a cell ending in this call shows it once."""
    save_figure(fig, path)
    return finish(fig)


# ----------------------------------------------------------------------------- data

def plot_byte_histogram(data, ax=None, log: bool = True, title: str | None = None):
    """Bar chart of the 256 byte counts; printable ASCII in one colour, every other byte in another."""
    counts = byte_histogram(data)
    fig, ax, owned = new_axes(ax, (10, 3.2))
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
    return finish(fig, owned)


# ----------------------------------------------------------------------------- per-byte surprisal

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
    fig, ax, owned = new_axes(ax, (max(6.0, 0.16 * width + 1.5), max(1.5, 0.24 * rows + 1.0)))
    image = ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest")
    colormap = plt.get_cmap(cmap)
    for i, value in enumerate(analysis.byte_values[start:end]):
        r, c = divmod(i, width)
        colour = text_colour(colormap(min(analysis.surprisal[start + i] / max(vmax, 1e-9), 1.0)))
        ax.text(c, r, glyph(int(value)), ha="center", va="center", fontsize=7, family="DejaVu Sans Mono", color=colour,
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
    return finish(fig, owned)



def _rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    return pd.Series(values).rolling(max(1, int(window)), min_periods=1).mean().to_numpy()


def _thinned(values: np.ndarray, points: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, values) at most ``points`` of them, evenly spaced: a line of a 1 MB file draws in milliseconds."""
    step = max(1, values.shape[0] // points)
    return np.arange(0, values.shape[0], step), values[::step]


def plot_surprisal(analysis: ByteAnalysis, window: int = 64, ax=None):
    """Surprisal of every byte (thin), its rolling mean over ``window`` bytes (thick), and the entropy's rolling mean."""
    fig, ax, owned = new_axes(ax, (10, 3.5))
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
    return finish(fig, owned)


def plot_surprisal_vs_entropy(analysis: ByteAnalysis, ax=None, skip_first: bool = True):
    """Each byte as a point: entropy of its prediction (x) against its surprisal (y).

    On average surprisal equals entropy when the model is calibrated; points far above the diagonal
    are confident mistakes, points near 0 on both axes are bytes the model was sure of and right about.
    Byte 0 (uniform prediction) is left out unless ``skip_first`` is False.
    """
    fig, ax, owned = new_axes(ax, (5, 4.5))
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
    return finish(fig, owned)


def plot_next_byte(analysis: ByteAnalysis, position: int, top_k: int = 20, ax=None, context: int = 24):
    """Bar chart of the ``top_k`` most probable values for byte ``position``; the actual byte's bar is highlighted.

    The title shows the last ``context`` bytes before the position, the actual byte, its surprisal and
    the entropy; when the actual byte is not among the top_k its rank and probability are noted.
    ``ax.patches`` holds exactly ``top_k`` bars.
    """
    position = _check_position(analysis, position)
    table = next_byte_table(analysis, position, top_k)
    fig, ax, owned = new_axes(ax, (max(5.0, 0.32 * len(table) + 2.0), 3.6))
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
        rank, p_actual = int(analysis.rank[position]), 2.0 ** -analysis.surprisal[position]
        ax.text(0.99, 0.95, f"actual {byte_label(actual)} not in top {len(table)}: rank {rank}, p = {p_actual:.2e}",
                transform=ax.transAxes, ha="right", va="top", fontsize=8, color="tab:orange", parse_math=False)
    return finish(fig, owned)


# ----------------------------------------------------------------------------- compression and training

def plot_bits_per_byte(df: pd.DataFrame, ax=None, title: str | None = None):
    """Bar chart of ``bits_per_byte`` per compressor (one bar per file when there are several), values on the bars."""
    import seaborn as sns

    order = list(dict.fromkeys(df["compressor"]))
    several_files = df["file"].nunique() > 1
    width = max(6.0, 0.8 * len(order) * (df["file"].nunique() if several_files else 1) + 2)
    fig, ax, owned = new_axes(ax, (width, 4.0))
    sns.barplot(data=df, x="compressor", y="bits_per_byte", hue="file" if several_files else None,
                order=order, errorbar=None, ax=ax)
    for bars in ax.containers:
        ax.bar_label(bars, fmt="%.2f", padding=2, fontsize=8)
    ax.set_xlabel("")
    ax.set_ylabel("bits per byte (lower is better)")
    if title:
        ax.set_title(title, fontsize=10)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right", rotation_mode="anchor")
    ax.margins(y=0.1)  # room for the labels above the tallest bar
    return finish(fig, owned)


def plot_sweep(table: pd.DataFrame, curves: pd.DataFrame, per_seed: pd.DataFrame | None = None):
    """A sweep's runs on the held-out split: final bits per byte against parameters, and every run's
    validation curve against training FLOPs and against wall-clock minutes (log axes).

    Failed runs (``status`` other than done) are left out. With ``per_seed`` (each point's mean and
    ``val_bits_per_byte_std`` over its seeds) the first panel shows the mean with the spread as error bars,
    and the curves of a point's seeds share its colour."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    if "status" in table:
        table = table[table["status"] == "done"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained", sharey=True)
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(dict.fromkeys(table["point"]))}
    runs = ["point", "seed"] if "seed" in curves else ["point"]
    for ax, x, label in ((axes[1], "train_flops", "training FLOPs"), (axes[2], "minutes", "wall-clock minutes")):
        labelled = set()
        for key, run in curves.groupby(runs, sort=False):
            name = key[0] if isinstance(key, tuple) else key
            ax.plot(run[x], run["val_bits_per_byte"], "o-", ms=3, color=colours.get(name),
                    label=None if name in labelled else str(name))
            labelled.add(name)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_title(f"validation curve against {label}", fontsize=10)

    ax = axes[0]
    if per_seed is not None:
        table = per_seed
    params, bpb = table["num_params"].to_numpy(float), table["val_bits_per_byte"].to_numpy(float)
    ax.scatter(params, bpb, c=[colours[p] for p in table["point"]])
    if per_seed is not None:
        ax.errorbar(params, bpb, yerr=per_seed["val_bits_per_byte_std"].fillna(0).to_numpy(float), fmt="none",
                    ecolor="0.4", capsize=3, lw=1)
    ax.set_xscale("log")
    ax.set_xlim(params.min() / 1.3, params.max() * 2.2)  # room on the right for the labels
    bottom, top = axes[1].get_ylim()  # shared with the curves, which set the range
    gap = 0.045 * (top - bottom)
    label_y = _spread(bpb, gap, bottom + gap / 2)  # points at nearly one size: labels stacked, not piled
    for name, x, y, ly in zip(table["point"], params, bpb, label_y):
        ax.annotate(str(name), (x, y), xytext=(x * 1.12, ly), fontsize=7, va="center",
                    arrowprops=dict(arrowstyle="-", lw=0.5, color="0.6") if abs(ly - y) > 1e-9 else None)
    if params.max() < 10 * params.min():  # within one decade the log axis has no labels: label the sizes
        ticks = []
        for size in np.unique(params):
            if not ticks or size >= 1.3 * ticks[-1]:  # labels that would overlap are left out
                ticks.append(size)
        ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e6:.3g}M" if v >= 1e6 else f"{v / 1e3:.3g}k"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation bits per byte (held out)")
    ax.set_title("at the end of each run", fontsize=10)
    axes[2].legend(fontsize=7, loc="upper right")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"sweep of {len(table)} points, mean and standard deviation over {int(per_seed['seeds'].max())} seeds"
                 if per_seed is not None else f"sweep of {len(table)} runs")
    return finish(fig)


def _spread(values: np.ndarray, gap: float, lowest: float) -> np.ndarray:
    """Label positions near ``values``, at least ``gap`` apart and none below ``lowest``, in the values' order."""
    order = np.argsort(values, kind="stable")
    placed = values[order].astype(float)
    if len(placed):
        placed -= min((placed[-1] - placed[0] + gap * (len(placed) - 1)) / 4, placed[0] - lowest)  # room below
        placed[0] = max(placed[0], lowest)
    for i in range(1, len(placed)):
        placed[i] = max(placed[i], placed[i - 1] + gap)
    out = np.empty_like(placed)
    out[order] = placed
    return out


class LiveLossPlot:
    """Train and validation bits per byte against steps, redrawn in place after every evaluation.

    Pass the object as ``train(..., callback=plot)``. ``display()`` shows the figure once and keeps an
    IPython display handle, which every later record updates (live in JupyterLab; in a papermill run the
    stored output is the final curve). ``save(path)`` writes the PNG.
    """

    def __init__(self, title: str = "training curve"):
        self.title = title
        self.records: list[dict] = []
        self.fig, self.ax, _ = new_axes(None, (8, 3.6))
        finish(self.fig)  # shown through the display handle only
        self._handle = None
        self._draw()

    def __call__(self, record: dict) -> None:
        self.records.append(dict(record))
        self._draw()
        if self._handle is not None:
            self._handle.update(self.fig)

    def display(self):
        from IPython.display import display

        self._handle = display(self.fig, display_id=True)
        return self._handle

    def _draw(self) -> None:
        ax = self.ax
        ax.clear()
        steps = [r["step"] for r in self.records]
        train = [(r["step"], r["train_bpb"]) for r in self.records if r.get("train_bpb") is not None]
        ax.plot(steps, [r["val_bpb"] for r in self.records], "o-", color="tab:red", label="validation (held out)")
        if train:
            ax.plot(*zip(*train), "s--", color="tab:blue", label="train (mean since last eval)")
        ax.set_xlabel("step")
        ax.set_ylabel("bits per byte")
        last = f": val {self.records[-1]['val_bpb']:.3f} bits/byte at step {steps[-1]}" if self.records else \
            " (waiting for the first evaluation)"
        ax.set_title(self.title + last)
        ax.grid(alpha=0.3)
        if self.records:
            ax.legend(loc="upper right")

    def save(self, path: str | os.PathLike) -> Path:
        return save_figure(self.fig, path)


# ----------------------------------------------------------------------------- patches and where the bits go (05)

def plot_patches(patchings):
    """Two rows, one column per rule: patch lengths (top) and bits per patch (bottom), each rule's
    histogram against its fixed-stride baseline of the same mean (``patching.solve_rules``' list)."""
    pairs = [(patchings[i], patchings[i + 1]) for i in range(0, len(patchings) - 1, 2)]
    fig, axes = plt.subplots(2, len(pairs), figsize=(4.2 * len(pairs), 6.0), layout="constrained", squeeze=False)
    for column, (rule, fixed) in enumerate(pairs):
        top, bottom = axes[0, column], axes[1, column]
        longest = int(max(rule.lengths.max(initial=1), fixed.lengths.max(initial=1)))
        edges = np.arange(0.5, min(longest, 64) + 1.5)
        top.hist([rule.lengths, fixed.lengths], bins=edges, label=[rule.rule, f"fixed stride {fixed.threshold:.3g}"],
                 color=["tab:blue", "tab:gray"])
        top.set_title(f"{rule.rule}: {rule.count:,} patches, mean {rule.mean_length:.2f}, median {rule.median_length:g}",
                      fontsize=9)
        top.set_xlabel("patch length (bytes)")
        top.legend(fontsize="small")
        if rule.bits is not None and fixed.bits is not None and rule.count:
            bottom.hist([rule.bits, fixed.bits], bins=40, label=[rule.rule, "fixed stride"], color=["tab:blue", "tab:gray"])
            bottom.set_title(f"bits per patch: sd {rule.bits.std():.1f} ({fixed.bits.std():.1f} fixed); on first bytes "
                             f"{100 * rule.first_byte_share:.1f}% ({100 * fixed.first_byte_share:.1f}%)", fontsize=8)
        bottom.set_xlabel("model bits per patch")
    axes[0, 0].set_ylabel("patches")
    axes[1, 0].set_ylabel("patches")
    return finish(fig)


def plot_bits_along(sources, window: int = 512):
    """Where the bits go along the file: each source's bits per byte (rolling mean over ``window`` bytes,
    top) and its cumulative bits (bottom); sources are ``bits.BitSource``s (blm, model alone, cm alone)."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5.5), layout="constrained", sharex=True)
    for source in sources:
        label = f"{source.name}: {source.bits_per_byte:.3f} bits/byte"
        top.plot(*_thinned(_rolling_mean(source.bits, window)), lw=0.8, label=label)
        bottom.plot(*_thinned(np.cumsum(source.bits) / 8192), lw=1.0, label=source.name)
    top.set_ylabel(f"bits per byte ({window}-byte mean)")
    top.legend(fontsize="small", loc="upper right")
    bottom.set_ylabel("cumulative KiB")
    bottom.set_xlabel("byte offset")
    return finish(fig)


def plot_bits_by_kind(table: pd.DataFrame, ax=None):
    """Grouped bars: bits per byte by kind of byte for each source (``bits.kind_table``); shares in the labels."""
    sources = [c for c in table.columns if c != "share_of_bytes"]
    kinds = [k for k in table.index if table.loc[k, "share_of_bytes"] > 0]
    fig, ax, owned = new_axes(ax, (max(6.0, 1.3 * len(kinds) + 2), 3.8))
    width = 0.8 / max(1, len(sources))
    x = np.arange(len(kinds))
    for i, source in enumerate(sources):
        bars = ax.bar(x + i * width, table.loc[kinds, source], width, label=source)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x + width * (len(sources) - 1) / 2,
                  [f"{k}\n{100 * table.loc[k, 'share_of_bytes']:.1f}% of bytes" for k in kinds], fontsize=8)
    ax.set_ylabel("bits per byte")
    ax.legend(fontsize="small")
    return finish(fig, owned)


def plot_checkpoint_difference(per_byte: pd.DataFrame, names, window: int = 512, ax=None):
    """The second checkpoint's bits minus the first's along the file (``bits.compare_bits``; rolling mean),
    positive where the first spends less."""
    fig, ax, owned = new_axes(ax, (10, 3.2))
    diff = per_byte["difference"].to_numpy()
    ax.plot(*_thinned(_rolling_mean(diff, window)), lw=0.8, color="tab:purple")
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_xlabel("byte offset")
    ax.set_ylabel(f"bits/byte, {window}-byte mean")
    ax.set_title(f"{names[1]} minus {names[0]}: {diff.sum():+,.0f} bits in all; above 0, {names[0]} wins", fontsize=9)
    return finish(fig, owned)
