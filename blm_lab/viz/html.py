"""The coloured-text view of per-byte surprisal as HTML (notebook 03 and the explorer)."""

from __future__ import annotations

import html

import matplotlib.pyplot as plt
import numpy as np

from ..data import byte_label
from ..scoring import ByteAnalysis, next_byte_table
from .style import NEWLINE, glyph, hex_colour, text_colour

__all__ = ["surprisal_html", "next_byte_html", "HOVER_GUESSES"]

HOVER_GUESSES = 5  # the model's top guesses each byte's hover text lists
# the hover text drawn by the page itself, not only as the browser's tooltip (which no screenshot shows)
HOVER_STYLE = ("<style>.blm-surprisal span[title]{position:relative}"
               ".blm-surprisal span[title]:hover::after{content:attr(title);position:absolute;left:0;top:1.6em;"
               "z-index:10;width:24em;white-space:normal;word-break:normal;background:#ffffe0;color:#000;"
               "border:1px solid #888;padding:2px 4px;"
               "font:12px sans-serif;box-shadow:1px 1px 3px #888}</style>")


def surprisal_html(analysis: ByteAnalysis, start: int = 0, length: int = 2000, vmax: float = 8.0, cmap: str = "Reds",
                   highlight: int | None = None, boundaries: np.ndarray | None = None) -> str:
    """Bytes ``start .. start + length`` as HTML: one ``<span>`` per byte, background darker = more surprising.

    Colour is ``cmap(surprisal / vmax)`` (clipped at vmax bits). Each span's title (the hover text)
    gives the position, the byte, its surprisal, the entropy of its prediction and the model's top
    guesses with their probabilities. ``boundaries`` ((N,) bool, e.g. ``Patching.mask``) marks the
    bytes that start a patch with a bar on their left and ``class="blm-patch"``. Only the window is
    built, so the cost does not grow with the file. Printable ASCII is shown (HTML-escaped),
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
        guesses = ", ".join(f"{byte_label(int(b))} {p:.2f}"
                            for b, p in zip(analysis.top_bytes[t, :HOVER_GUESSES], analysis.top_probs[t, :HOVER_GUESSES]))
        title = (f"#{t} byte 0x{value:02x} {byte_label(value)}: {analysis.surprisal[t]:.2f} bits, "
                 f"entropy {analysis.entropy[t]:.2f} bits; top guesses: {guesses}")
        style = f"background:{hex_colour(colour)};color:{text_colour(colour)}"
        classes = []
        if boundaries is not None and boundaries[t]:
            style += ";box-shadow:inset 2px 0 0 #2ca02c"
            classes.append("blm-patch")
        if highlight is not None and t == int(highlight):
            style += ";outline:2px solid #1f77b4;outline-offset:0;position:relative;z-index:1"
            classes.append("blm-hl")
        extra = f' class="{" ".join(classes)}"' if classes else ""
        parts.append(f'<span{extra} data-pos="{t}" title="{html.escape(title, quote=True)}" style="{style}">'
                     f"{html.escape(glyph(value))}</span>")
        if value == NEWLINE:
            parts.append("<br>")
    scale = ", ".join(hex_colour(colormap(f)) for f in np.linspace(0.0, 1.0, 6))
    header = (f'<div style="font-family:sans-serif;font-size:12px;margin-bottom:4px">bytes {start}&ndash;{max(start, end - 1)} '
              f"of {n} &middot; mean {analysis.mean_bits_per_byte:.3f} bits/byte &middot; colour: 0 "
              f'<b style="display:inline-block;width:120px;height:10px;vertical-align:middle;'
              f'background:linear-gradient(to right, {scale})"></b> {vmax:g} bits</div>')
    body = ('<div style="font-family:\'DejaVu Sans Mono\',Menlo,Consolas,monospace;font-size:13px;line-height:1.5;'
            f'white-space:pre-wrap;word-break:break-all">{"".join(parts)}</div>')
    return f'<div class="blm-surprisal">{HOVER_STYLE}{header}{body}</div>'


def next_byte_html(analysis: ByteAnalysis, position: int, top_k: int = 10, context: int = 24) -> str:
    """The model's ``top_k`` guesses for byte ``position`` as horizontal HTML bars (the explorer's chart).

    One ``<div class="blm-bar">`` per guess, most probable first, carrying ``data-byte`` and
    ``data-p`` (its probability); the actual byte's bar is orange and has ``data-actual``. A title line
    gives the bytes before, the actual byte, its surprisal and rank, and the entropy. Text, not an
    image: a redraw costs about a millisecond (the PNG twin is ``figures.plot_next_byte``).
    """
    table = next_byte_table(analysis, position, top_k)
    t = int(position)
    actual = analysis.data[t]
    before = analysis.data[max(0, t - int(context)):t].decode("utf-8", errors="replace")
    scale = max(float(table["probability"].max()), 1e-12)
    rows = []
    for byte, label, p, hit in zip(table["byte"], table["label"], table["probability"], table["is_actual"]):
        colour = "#ff7f0e" if hit else "#1f77b4"
        rows.append(f'<div class="blm-bar" data-byte="{int(byte)}" data-p="{p:.9g}"{" data-actual" if hit else ""} '
                    'style="display:flex;align-items:center;gap:6px;height:18px">'
                    f'<code style="width:5em;text-align:right">{html.escape(label)}</code>'
                    f'<span style="display:inline-block;height:12px;width:{300 * p / scale:.1f}px;background:{colour}"></span>'
                    f"<span>{p:.3f}</span></div>")
    note = "" if table["is_actual"].any() else (f'<div style="color:#ff7f0e">actual {html.escape(byte_label(actual))} not in '
                                                f"the top {len(table)}: rank {int(analysis.rank[t])}</div>")
    title = (f"<div><b>byte {t}</b> after <code>{html.escape(repr(before))}</code>: actual "
             f"<code>{html.escape(byte_label(actual))}</code>, {analysis.surprisal[t]:.2f} bits, "
             f"entropy {analysis.entropy[t]:.2f} bits</div>")
    return f'<div class="blm-bars" style="font:12px sans-serif">{title}{"".join(rows)}{note}</div>'
