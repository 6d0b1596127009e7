"""How bytes are drawn in the coloured views (the HTML text and its static figure): glyphs and colours."""

from __future__ import annotations

from ..data import PRINTABLE

NEWLINE, TAB = 0x0A, 0x09


def glyph(value: int) -> str:
    """How a byte is drawn in the coloured views: itself if printable, an arrow for \\n and \\t, '·' otherwise."""
    if value in PRINTABLE:
        return chr(value)
    return {NEWLINE: "↵", TAB: "→"}.get(value, "·")


def hex_colour(rgba) -> str:
    r, g, b = (int(round(255 * c)) for c in rgba[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def text_colour(rgba) -> str:
    luminance = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
    return "#000" if luminance > 0.5 else "#fff"
