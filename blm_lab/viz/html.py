"""The coloured-text view of per-byte surprisal as HTML (notebook 03 and the explorer)."""

from __future__ import annotations

import html

import matplotlib.pyplot as plt
import numpy as np

from ..data import byte_label
from ..scoring import ByteAnalysis
from .style import NEWLINE, glyph, hex_colour, text_colour

__all__ = ["surprisal_html", "HOVER_GUESSES"]

HOVER_GUESSES = 5  # the model's top guesses each byte's hover text lists
# the hover text drawn by the page itself, not only as the browser's tooltip (which no screenshot shows)
HOVER_STYLE = ("<style>.blm-surprisal span[title]{position:relative}"
               ".blm-surprisal span[title]:hover::after{content:attr(title);position:absolute;left:0;top:1.6em;"
               "z-index:10;white-space:pre;background:#ffffe0;color:#000;border:1px solid #888;padding:2px 4px;"
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
