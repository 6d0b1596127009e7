"""blm_lab.explorer: the widgets react to their sliders and buttons, and the static views are written."""

import re

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from blm_lab.scoring import analyze_bytes, next_byte_table
from blm_lab.patching import solve_threshold
from blm_lab.viz.explorer import HTML_WINDOW, EntropyExplorer, PatchView, make_explorer, save_static_views
from blm_lab.gpt import BytesGPT, BytesGPTConfig

TEXT = "the cat sat on the mat <&> and the dog sat on the log\n" * 3


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BytesGPT(BytesGPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=32)).eval()


@pytest.fixture(scope="module")
def explorer(model):
    """One explorer shared by the tests below (each sets the slider values it relies on): drawing is the slow part."""
    return make_explorer(model, text=TEXT)


def highlighted(explorer) -> list[str]:
    return re.findall(r'class="[^"]*blm-hl[^"]*" data-pos="(\d+)"', explorer.html.value)


def bar_heights(explorer) -> np.ndarray:
    return np.array([float(p) for p in re.findall(r'class="blm-bar" data-byte="\d+" data-p="([^"]+)"', explorer.chart.value)])


def test_initial_state(model):
    explorer = make_explorer(model, text=TEXT)
    n = len(TEXT.encode())
    assert isinstance(explorer, EntropyExplorer)
    assert explorer.position.max == n - 1 and len(explorer.analysis) == n
    assert explorer.current_position == explorer.position.value
    assert highlighted(explorer) == [str(explorer.position.value)]
    assert 'class="blm-bars"' in explorer.chart.value
    assert "bits/byte" in explorer.status.value
    assert explorer.widget.children  # the VBox that a notebook cell displays
    assert "application/vnd.jupyter.widget-view+json" in explorer._repr_mimebundle_()


def test_moving_the_position_redraws(explorer):
    before_info, before_draws = explorer.info.value, explorer.draws
    new = 7 if explorer.position.value != 7 else 8
    explorer.position.value = new
    assert explorer.current_position == new and explorer.draws == before_draws + 1
    assert f"<b>byte {new}</b>" in explorer.chart.value
    expected = next_byte_table(explorer.analysis, new, explorer.top_k.value)["probability"].to_numpy()
    np.testing.assert_allclose(bar_heights(explorer), expected, rtol=1e-6)
    assert explorer.info.value != before_info and f"byte <b>{new}</b>" in explorer.info.value
    assert highlighted(explorer) == [str(new)]


def test_top_k_changes_the_number_of_bars(explorer):
    explorer.top_k.value = 5
    assert len(bar_heights(explorer)) == 5
    explorer.top_k.value = 16
    assert len(bar_heights(explorer)) == 16 and explorer.top_k.max == explorer.analysis.top_k


def test_hover_shows_top_guesses_and_spans_jump(explorer):
    explorer.position.value = 20
    title = re.search(r'data-pos="20" title="([^"]*)"', explorer.html.value).group(1)
    top = next_byte_table(explorer.analysis, 20, 5)
    assert "top guesses: " in title and f"{top['probability'].iloc[0]:.2f}" in title
    assert len(explorer.spans.options) > 0
    label, start = explorer.spans.options[1]
    explorer.spans.value = start
    assert explorer.current_position == start and highlighted(explorer) == [str(start)]


def test_patch_boundaries_overlay(explorer):
    explorer.patches.value = False
    assert "blm-patch" not in explorer.html.value
    explorer.threshold.value = 0.0  # every byte whose prediction has any entropy starts a patch
    explorer.patches.value = True
    marked = [int(p) for p in re.findall(r'class="blm-patch[^"]*" data-pos="(\d+)"', explorer.html.value)]
    expected = np.flatnonzero(explorer.analysis.entropy > 0).tolist()
    shown = [int(p) for p in re.findall(r'data-pos="(\d+)"', explorer.html.value)]
    assert marked == [p for p in expected if p in shown] and "patches (global rule" in explorer.info.value
    explorer.threshold.value = 10.0
    assert re.findall(r'class="blm-patch[^"]*" data-pos="(\d+)"', explorer.html.value) == ["0"]
    explorer.patches.value = False


def test_empty_text_is_a_message(model):
    explorer = make_explorer(model, text=TEXT)
    explorer.text.value = ""
    explorer.analyze_button.click()
    assert "empty" in explorer.status.value and len(explorer.analysis) == len(TEXT.encode())


def test_vmax_recolours_the_text(explorer):
    explorer.vmax.value = 8.0
    before, draws = explorer.html.value, explorer.draws
    explorer.vmax.value = 2.0
    assert explorer.html.value != before and explorer.draws == draws  # recolouring does not redraw the chart
    assert explorer.html.value.count("<span") == len(TEXT.encode())


def test_analyze_new_text_resets_the_slider(model, tmp_path):
    explorer = make_explorer(model, text=TEXT, max_bytes=100)
    explorer.position.value = explorer.position.max
    explorer.text.value = "short text"
    explorer.analyze_button.click()
    assert explorer.position.max == len("short text") - 1
    assert explorer.position.value <= explorer.position.max
    assert explorer.analysis.data == b"short text" and explorer.current_position == explorer.position.value
    # a file path takes over from the text; a missing one is reported, not raised
    path = tmp_path / "sample.bin"
    path.write_bytes(bytes(range(256)) * 4)
    explorer.file.value = str(path)
    explorer.analyze_button.click()
    assert len(explorer.analysis) == 100 and explorer.position.max == 99
    assert "first 100 of 1,024" in explorer.status.value
    explorer.file.value = str(tmp_path / "missing.txt")
    explorer.analyze_button.click()
    assert "not found" in explorer.status.value and len(explorer.analysis) == 100


def test_long_input_shows_a_window_around_the_position(model):
    explorer = make_explorer(model, text="abcdefghij" * 150)
    explorer.position.value = 1000
    spans = [int(p) for p in re.findall(r'data-pos="(\d+)"', explorer.html.value)]
    assert len(spans) == 800 and spans[0] <= 1000 <= spans[-1]


def test_save_static_views(explorer, model, tmp_path):
    explorer.position.value = 9
    paths = save_static_views(explorer, tmp_path / "views")
    names = sorted(p.name for p in paths)
    assert names == ["next_byte_9.png", "surprisal.png", "surprisal_text.html", "surprisal_text.png"]
    for p in paths:
        assert p.stat().st_size > 0
    assert "<span" in (tmp_path / "views" / "surprisal_text.html").read_text(encoding="utf-8")
    bare = analyze_bytes(model, "tiny input")
    paths = save_static_views(bare, tmp_path / "bare", position=3)
    assert (tmp_path / "bare" / "next_byte_3.png").is_file() and len(paths) == 4


def test_patch_view_solves_the_threshold_on_each_change(explorer):
    view = PatchView(explorer.analysis, target_mean=4.0)
    solved = solve_threshold(explorer.analysis.entropy_nats, 4.0, "global")
    assert view.solution.threshold == solved.threshold
    assert view.html.value.count("blm-patch") == int(solved.patching.mask[:HTML_WINDOW].sum())
    assert f"{solved.threshold:.4f} nats" in view.info.value
    view.target.value = 8.0
    assert view.solution.mean_length > 6 and view.html.value.count("blm-patch") < int(solved.patching.mask[:HTML_WINDOW].sum())
    view.rule.value = "combined"
    view.target.value = 1.0  # the combined rule cannot start patches on two bytes in a row
    assert view.solution is None and "out of reach" in view.info.value and "achievable means" in view.info.value


def test_explorer_shows_a_given_analysis(explorer, model):
    shown = EntropyExplorer(model, analysis=explorer.analysis)
    assert shown.analysis is explorer.analysis and "the given analysis" in shown.status.value
