"""An ipywidgets explorer of a model's per-byte surprisal (notebook 03), and its static twin for headless runs.

``make_explorer(model, text=...)`` analyses the text once (``scoring.analyze_bytes``) and shows:
the text coloured by surprisal with the current byte outlined, a slider over byte positions, the
bars of the model's top-k guesses for the byte at that position (HTML), and a line with the byte, its
surprisal and the entropy of its prediction. Moving a slider only redraws; "Analyze" re-runs the
model on the (edited) text or on a file.

A notebook cell that ends in the explorer shows it. Without a browser (papermill, CI),
``save_static_views`` writes the same views as PNG files plus the coloured text as an HTML file.
"""

from __future__ import annotations

import html
import math
import os
from contextlib import contextmanager
from pathlib import Path

import ipywidgets as widgets
import numpy as np

from ..bits import costliest_spans
from ..data import byte_label
from ..errors import BlmError, PathError
from ..files import atomic_write, check_input_file
from ..patching import BLT_THRESHOLD, RULES, patch_starts, solve_threshold
from ..scoring import ByteAnalysis, analyze_bytes
from .figures import plot_next_byte, plot_surprisal, plot_surprisal_text, save_figure
from .html import next_byte_html, surprisal_html

__all__ = ["EntropyExplorer", "make_explorer", "save_static_views", "html_window", "DEFAULT_TEXT", "PatchView"]

DEFAULT_TEXT = (
    "def mean(values):\n"
    "    \"\"\"Return the arithmetic mean of a non-empty list of numbers.\"\"\"\n"
    "    return sum(values) / len(values)\n"
    "\n"
    "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog.\n"
)
HTML_WINDOW = 800  # bytes of coloured text shown around the current position
SPANS = 20  # costliest spans offered in the jump list
SPAN_WIDTH = 16  # bytes per costliest span


def html_window(n: int, position: int, length: int = HTML_WINDOW) -> int:
    """First byte of a ``length``-byte window over ``n`` bytes that keeps ``position`` near its middle."""
    return int(max(0, min(position - length // 2, n - length)))


def _most_surprising(analysis: ByteAnalysis) -> int:
    """The most surprising byte after byte 0 (which is always the uniform 8 bits)."""
    if len(analysis) <= 1:
        return 0
    return 1 + int(np.argmax(analysis.surprisal[1:]))


class EntropyExplorer:
    """Widgets over one ``ByteAnalysis``; build it with ``make_explorer``.

    Widgets (attributes): ``text`` (Textarea), ``file`` (Text: a path, used instead of the text
    when set), ``analyze_button``, ``status`` (HTML: what was analysed, or the error), ``position``,
    ``top_k`` (IntSliders, top_k up to the guesses the analysis kept), ``vmax`` (FloatSlider, bits
    at the darkest colour), ``spans`` (Dropdown: the costliest spans; picking one jumps there),
    ``patches`` (Checkbox: overlay BLT global-rule patch boundaries) with ``threshold`` (FloatSlider,
    nats), ``html`` (the coloured text; hover a byte for the model's top guesses), ``info`` (HTML: the
    byte at ``position``, and the patching's mean length), ``chart`` (HTML: the next-byte bars)
    and ``widget`` (the VBox holding them all).

    State: ``analysis`` (the current ByteAnalysis), ``current_position`` (the position last drawn),
    ``boundaries`` ((N,) bool patch starts, or None) and ``draws`` (how many times the chart was drawn). A redraw touches only the window of text around
    the position and one chart, so its cost does not grow with the file (benchmarks/bench_explorer.py).
    """

    def __init__(self, model, text: str | None = None, file: str | os.PathLike | None = None, max_bytes: int | None = 4096,
                 device=None, window: int = HTML_WINDOW, analysis: ByteAnalysis | None = None):
        self.model = model
        self.max_bytes = max_bytes
        self.device = device
        self.window = int(window)
        self.analysis: ByteAnalysis | None = None
        self.boundaries: np.ndarray | None = None
        self.source = ""
        self.current_position: int | None = None
        self.draws = 0
        self._holding_updates = False

        self.text = widgets.Textarea(value=DEFAULT_TEXT if text is None and file is None else (text or ""),
                                     placeholder="text to analyse", description="text",
                                     layout=widgets.Layout(width="100%", height="7em"))
        self.file = widgets.Text(value="" if file is None else str(file), description="file",
                                 placeholder="path of a file (used instead of the text when set)",
                                 layout=widgets.Layout(width="70%"))
        self.analyze_button = widgets.Button(description="Analyze", button_style="primary", icon="play",
                                             tooltip="run the model on the text (or the file)")
        self.status = widgets.HTML()
        self.position = widgets.IntSlider(value=0, min=0, max=0, description="position", continuous_update=False,
                                          layout=widgets.Layout(width="50%"))
        self.top_k = widgets.IntSlider(value=10, min=1, max=16, description="top k", continuous_update=False)
        self.vmax = widgets.FloatSlider(value=8.0, min=0.5, max=16.0, step=0.5, description="vmax (bits)",
                                        continuous_update=False, readout_format=".1f")
        self.spans = widgets.Dropdown(options=[], description="costliest", layout=widgets.Layout(width="60%"))
        self.patches = widgets.Checkbox(value=False, description="patch boundaries", indent=False)
        self.threshold = widgets.FloatSlider(value=BLT_THRESHOLD, min=0.0, max=5.6, step=0.05, description="θ (nats)",
                                             continuous_update=False, readout_format=".2f")
        self.info = widgets.HTML()
        self.html = widgets.HTML(layout=widgets.Layout(width="58%", max_height="32em", overflow="auto"))
        self.chart = widgets.HTML(layout=widgets.Layout(width="42%"))
        self.widget = widgets.VBox([
            self.text,
            widgets.HBox([self.file, self.analyze_button]),
            self.status,
            widgets.HBox([self.position, self.top_k, self.vmax]),
            widgets.HBox([self.spans, self.patches, self.threshold]),
            self.info,
            widgets.HBox([self.html, self.chart]),
        ])

        self.analyze_button.on_click(lambda _button: self.analyze())
        self.position.observe(self._on_position, names="value")
        self.top_k.observe(self._on_top_k, names="value")
        self.vmax.observe(self._on_vmax, names="value")
        self.spans.observe(self._on_span, names="value")
        self.patches.observe(self._on_patches, names="value")
        self.threshold.observe(self._on_patches, names="value")
        if analysis is None:
            self.analyze()
        else:  # one already made (notebook 05, benchmarks): shown as it is, "Analyze" re-runs the model
            self.show(analysis, "the given analysis", len(analysis))

    # ------------------------------------------------------------------ actions

    def _read_source(self) -> tuple[bytes, str, int]:
        """(bytes to analyse, where they came from, total size before the max_bytes cut)."""
        path = self.file.value.strip()
        if path:
            p = check_input_file(path, "file")
            try:
                with open(p, "rb") as f:
                    data = f.read() if self.max_bytes is None else f.read(self.max_bytes)
            except OSError as exc:
                raise PathError(f"cannot read file {str(p)!r}: {exc.strerror or exc}") from None
            return data, str(p), p.stat().st_size
        data = self.text.value.encode("utf-8")
        return data, "text", len(data)

    def analyze(self) -> ByteAnalysis | None:
        """Run the model on the text (or file) and redraw everything; errors are shown in ``status``."""
        try:
            data, source, total = self._read_source()
            analysis = analyze_bytes(self.model, data, max_bytes=self.max_bytes, device=self.device)
        except BlmError as exc:
            self.status.value = f'<span style="color:#b00">cannot analyse: {html.escape(str(exc))}</span>'
            return None
        return self.show(analysis, source, total)

    def show(self, analysis: ByteAnalysis, source: str, total: int) -> ByteAnalysis | None:
        """Show ``analysis`` (of ``total`` bytes from ``source``, maybe cut) and redraw everything."""
        if len(analysis) == 0:
            self.status.value = f"<b>{html.escape(source)}</b> is empty: nothing to analyse; type some text or pick a file"
            return None
        first = self.analysis is None
        self.analysis, self.source = analysis, source
        spans = costliest_spans(analysis.data, analysis.surprisal, width=SPAN_WIDTH, count=SPANS, context=0)
        with self._hold():
            self.position.max = len(analysis) - 1  # clamps the value when the new input is shorter
            self.top_k.max = analysis.top_k
            self.spans.options = [(f"#{r.start}: {r.bits:.0f} bits {r.span!r}", int(r.start)) for r in spans.itertuples()]
            self.spans.value = None
            if first:
                self.position.value = _most_surprising(analysis)
        self._find_boundaries()
        cut = f" (first {len(analysis):,} of {total:,})" if total > len(analysis) else ""
        self.status.value = (f"<b>{html.escape(source)}</b>: {len(analysis):,} bytes{cut} &middot; "
                             f"<b>{analysis.mean_bits_per_byte:.3f} bits/byte</b> &middot; "
                             f"context {analysis.block_size} bytes &middot; byte 0 counts as 8 bits (uniform)")
        self.refresh()
        return analysis

    def refresh(self) -> None:
        """Redraw the coloured text, the info line and the chart for the current slider values."""
        if self.analysis is None:
            return
        self.current_position = int(self.position.value)
        self._draw_html()
        self._draw_info()
        self._draw_chart()

    def _find_boundaries(self) -> None:
        self.boundaries = None
        if self.patches.value:
            starts = patch_starts(self.analysis.entropy_nats, "global", threshold=float(self.threshold.value))
            self.boundaries = np.zeros(len(self.analysis), dtype=bool)
            self.boundaries[starts] = True

    def _draw_html(self) -> None:
        position = int(self.position.value)
        start = html_window(len(self.analysis), position, self.window)
        self.html.value = surprisal_html(self.analysis, start=start, length=self.window, vmax=float(self.vmax.value),
                                         highlight=position, boundaries=self.boundaries)

    def _draw_info(self) -> None:
        a, t = self.analysis, int(self.position.value)
        value = a.data[t]
        self.info.value = (f"byte <b>{t}</b>: <code>{html.escape(byte_label(value))}</code> (0x{value:02x}) &middot; "
                           f"surprisal <b>{a.surprisal[t]:.2f} bits</b> (p = {2.0 ** -a.surprisal[t]:.3g}, rank {a.rank[t]}) &middot; "
                           f"entropy of the prediction <b>{a.entropy[t]:.2f} bits</b>")
        if self.boundaries is not None:
            count = int(self.boundaries.sum())
            self.info.value += (f" &middot; {count:,} patches (global rule, θ = {self.threshold.value:.2f} nats), "
                                f"mean {len(a) / count:.2f} bytes")

    def _draw_chart(self) -> None:
        # HTML bars, not a matplotlib PNG: rendering a figure took most of a redraw's 200 ms budget
        self.chart.value = next_byte_html(self.analysis, int(self.position.value), top_k=int(self.top_k.value))
        self.draws += 1

    # ------------------------------------------------------------------ observers

    @contextmanager
    def _hold(self):
        """Suppress observer redraws while several widget values change; the caller redraws once."""
        self._holding_updates = True
        try:
            yield
        finally:
            self._holding_updates = False

    def _on_position(self, change) -> None:
        if not self._holding_updates:
            self.refresh()

    def _on_top_k(self, change) -> None:
        if not self._holding_updates and self.analysis is not None:
            self._draw_chart()

    def _on_vmax(self, change) -> None:
        if not self._holding_updates and self.analysis is not None:
            self._draw_html()

    def _on_span(self, change) -> None:
        if not self._holding_updates and change["new"] is not None:
            self.position.value = int(change["new"])  # its observer redraws

    def _on_patches(self, change) -> None:
        if not self._holding_updates and self.analysis is not None:
            self._find_boundaries()
            self._draw_html()
            self._draw_info()

    # ------------------------------------------------------------------ display

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


class PatchView:
    """Entropy patches over coloured text (notebook 05): a rule and a target mean patch length; each change
    solves the threshold (``patching.solve_threshold``) and redraws the boundaries.

    Widgets: ``rule`` (Dropdown), ``target`` (FloatSlider, bytes), ``start`` (IntSlider, first byte
    shown), ``info`` (HTML: the threshold in nats and bits, the mean reached and how far it is from the
    target, or why the target is out of reach), ``html`` and ``widget``. ``solution`` is the last
    ``ThresholdSolution`` (None after an unreachable target).
    """

    def __init__(self, analysis: ByteAnalysis, target_mean: float = 4.5, rule: str = "global",
                 relative_threshold: float = 0.0, max_length: int | None = None, window: int = HTML_WINDOW):
        self.analysis, self.relative_threshold, self.max_length, self.window = analysis, relative_threshold, max_length, window
        self.solution = None
        self.rule = widgets.Dropdown(options=list(RULES), value=rule, description="rule")
        self.target = widgets.FloatSlider(value=target_mean, min=1.0, max=16.0, step=0.25, description="mean length",
                                          continuous_update=False, readout_format=".2f")
        self.start = widgets.IntSlider(value=0, min=0, max=max(0, len(analysis) - 1), step=max(1, window // 2),
                                       description="from byte", continuous_update=False)
        self.info = widgets.HTML()
        self.html = widgets.HTML(layout=widgets.Layout(max_height="28em", overflow="auto"))
        self.widget = widgets.VBox([widgets.HBox([self.rule, self.target, self.start]), self.info, self.html])
        for control in (self.rule, self.target, self.start):
            control.observe(lambda _change: self.redraw(), names="value")
        self.redraw()

    def redraw(self) -> None:
        try:
            self.solution = solve_threshold(self.analysis.entropy_nats, float(self.target.value), self.rule.value,
                                            self.relative_threshold, self.max_length, self.analysis.surprisal)
        except BlmError as exc:
            self.solution = None
            self.info.value = f'<span style="color:#b00">{html.escape(str(exc))}</span>'
            self.html.value = surprisal_html(self.analysis, start=int(self.start.value), length=self.window)
            return
        s, p = self.solution, self.solution.patching
        name = "θ_r" if s.rule == "monotonic" else "θ"
        self.info.value = (f"{s.rule}: {name} = <b>{s.threshold:.4f} nats</b> ({s.threshold / math.log(2):.4f} bits) "
                           f"&middot; {p.count:,} patches, mean <b>{p.mean_length:.3f}</b> bytes "
                           f"(target {s.target_mean:g}, off by {s.error:+.3f}) &middot; median {p.median_length:g}")
        self.html.value = surprisal_html(self.analysis, start=int(self.start.value), length=self.window,
                                         boundaries=p.mask)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def make_explorer(model, text: str | None = None, file: str | os.PathLike | None = None, max_bytes: int | None = 4096,
                  device=None) -> EntropyExplorer:
    """An ``EntropyExplorer`` over ``text`` (or the first ``max_bytes`` of ``file``), analysed at once.

    With neither, a short built-in sample of code and prose is used. The model runs on ``device``
    (default: where it already is).
    """
    return EntropyExplorer(model, text=text, file=file, max_bytes=max_bytes, device=device)


def save_static_views(explorer_or_analysis, out_dir: str | os.PathLike, position: int | None = None,
                      top_k: int | None = None, vmax: float | None = None) -> list[Path]:
    """Write the explorer's views as files for headless runs; returns their paths.

    ``surprisal.png`` (per-byte surprisal), ``next_byte_<position>.png`` (top-k chart),
    ``surprisal_text.png`` (coloured text, rows of 64 bytes, 1024 bytes around the position) and
    ``surprisal_text.html`` (the coloured HTML view, a standalone page). ``position``, ``top_k`` and
    ``vmax`` default to the explorer's current values, or for a bare ByteAnalysis to its most
    surprising byte, 20 and 8 bits.
    """
    if isinstance(explorer_or_analysis, EntropyExplorer):
        explorer = explorer_or_analysis
        analysis = explorer.analysis
        if analysis is None:
            raise BlmError("the explorer has no analysis yet (see its status line); analyse some text first")
        position = explorer.current_position if position is None else position
        top_k = explorer.top_k.value if top_k is None else top_k
        vmax = explorer.vmax.value if vmax is None else vmax
    else:
        analysis = explorer_or_analysis
        position = _most_surprising(analysis) if position is None else position
    top_k = 20 if top_k is None else int(top_k)
    vmax = 8.0 if vmax is None else float(vmax)
    position = int(position)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    paths = [
        save_figure(plot_surprisal(analysis), out_dir / "surprisal.png"),
        save_figure(plot_next_byte(analysis, position, top_k=top_k), out_dir / f"next_byte_{position}.png"),
    ]
    start = html_window(len(analysis), position, 1024)
    paths.append(save_figure(plot_surprisal_text(analysis, start=start, length=1024, width=64, vmax=vmax, highlight=position),
                             out_dir / "surprisal_text.png"))
    start = html_window(len(analysis), position, HTML_WINDOW)
    body = surprisal_html(analysis, start=start, length=HTML_WINDOW, vmax=vmax, highlight=position)
    html_path = out_dir / "surprisal_text.html"
    page = (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>surprisal</title></head>'
            f"<body>{body}</body></html>\n")
    atomic_write(html_path, lambda f: f.write(page.encode("utf-8")))
    paths.append(html_path)
    return paths
