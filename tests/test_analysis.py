"""blm_lab.analysis: data statistics, per-byte surprisal of a tiny random model, and the views of it."""

import math
import re

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from blm_lab.analysis import byte_histogram, empirical_entropy, entropy_table, preview, text_preview
from blm_lab.data import byte_label
from blm_lab.scoring import TOP_K, analyze_bytes, next_byte_table
from blm_lab.viz.figures import (plot_byte_histogram, plot_next_byte, plot_surprisal, plot_surprisal_text,
                                 plot_surprisal_vs_entropy, save_figure)
from blm_lab.viz.html import surprisal_html
from blm_lab.gpt import BytesGPT, BytesGPTConfig

TEXT = b"Hello <world> & friends!\n\tcode: x = a & b < c\n" + bytes([0, 200, 255]) + b" the end of the text."


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BytesGPT(BytesGPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=32)).eval()


@pytest.fixture(scope="module")
def analysis(model):
    return analyze_bytes(model, TEXT)


# ----------------------------------------------------------------------------- data statistics

def test_byte_histogram_counts_every_byte():
    counts = byte_histogram(TEXT)
    assert counts.shape == (256,) and counts.sum() == len(TEXT)
    assert counts[ord("&")] == TEXT.count(b"&") and counts[255] == 1
    assert byte_histogram("aé").sum() == 3  # str is counted as its UTF-8 bytes


def test_empirical_entropy_known_values():
    rng = np.random.default_rng(0)
    uniform = rng.integers(0, 256, size=200_000, dtype=np.uint8)
    assert empirical_entropy(uniform, 0) == pytest.approx(8.0, abs=0.01)
    assert empirical_entropy(b"a" * 1000, 0) == 0.0
    assert empirical_entropy(b"abcd" * 500, 0) == pytest.approx(2.0)
    assert empirical_entropy(b"abcd" * 500, 1) == pytest.approx(0.0, abs=1e-12)
    # order 1 of a fair coin sequence stays 1 bit; order 9 goes through the row-unique path
    coin = rng.integers(0, 2, size=50_000, dtype=np.uint8)
    assert empirical_entropy(coin, 1) == pytest.approx(1.0, abs=0.01)
    assert empirical_entropy(b"abcdefghij" * 50, 9) == pytest.approx(0.0, abs=1e-12)


def test_empirical_entropy_matches_a_direct_count():
    data = b"abracadabra abracadabra"
    pairs = {}
    for c, x in zip(data[:-1], data[1:]):
        pairs.setdefault(c, []).append(x)
    expected = 0.0
    for nexts in pairs.values():
        for x in set(nexts):
            p_joint = nexts.count(x) / (len(data) - 1)
            expected -= p_joint * math.log2(nexts.count(x) / len(nexts))
    assert empirical_entropy(data, 1) == pytest.approx(expected)


def test_entropy_table_and_errors():
    table = entropy_table(b"abcabcabd" * 20)
    assert list(table.columns) == ["order", "bits_per_byte", "contexts"]
    assert list(table["order"]) == [0, 1, 2, 3]
    assert table["bits_per_byte"].iloc[0] > table["bits_per_byte"].iloc[1] > 0
    assert list(table["contexts"]) == [1, 4, 5, 6]  # '', a b c d, ab bc ca bd da, abc bca cab abd bda dab
    with pytest.raises(ValueError, match="too few"):
        empirical_entropy(b"ab", 2)


def test_preview_looks_like_xxd():
    lines = preview(b"Hello, world!\n\x00\xffABCDEFGH", start=0, length=256).splitlines()
    assert lines[0] == "00000000: 4865 6c6c 6f2c 2077 6f72 6c64 210a 00ff  Hello, world!..."
    assert lines[1] == "00000010: 4142 4344 4546 4748                      ABCDEFGH"
    assert preview(bytes(range(64)), start=32, length=16) == (
        "00000020: 2021 2223 2425 2627 2829 2a2b 2c2d 2e2f   !\"#$%&'()*+,-./")
    assert text_preview("naïve text", 5) == "naïv"  # ï is two bytes
    assert text_preview(b"abc\xff", 10) == "abc\ufffd"


# ----------------------------------------------------------------------------- model analysis

def test_surprisal_matches_a_direct_forward(model, analysis):
    idx = torch.tensor(list(TEXT[:16]))[None]
    with torch.no_grad():
        logits, _ = model(idx)  # (1, 16, 256): row t predicts byte t + 1
    log_probs = torch.log_softmax(logits[0].double(), dim=-1)
    for t in range(1, 16):
        expected = -log_probs[t - 1, TEXT[t]].item() / math.log(2)
        assert analysis.surprisal[t] == pytest.approx(expected, abs=1e-4)
        probs = log_probs[t - 1].exp().numpy()
        order = np.argsort(-probs, kind="stable")
        np.testing.assert_allclose(analysis.top_probs[t], probs[order[:analysis.top_k]], atol=1e-6)
        assert set(analysis.top_bytes[t, :4].tolist()) == set(order[:4].tolist())
        assert analysis.rank[t] == int((probs > probs[TEXT[t]]).sum()) + 1
        assert analysis.entropy[t] == pytest.approx(-(probs * np.log2(probs)).sum(), abs=1e-4)
    assert analysis.surprisal[0] == pytest.approx(8.0) and analysis.entropy[0] == pytest.approx(8.0)


def test_analysis_shapes_and_ranges(analysis):
    n = len(TEXT)
    assert len(analysis) == n and analysis.data == TEXT
    assert analysis.top_bytes.shape == (n, TOP_K) and analysis.top_bytes.dtype == np.uint8
    assert analysis.top_probs.shape == (n, TOP_K) and analysis.top_probs.dtype == np.float32
    assert np.all(np.diff(analysis.top_probs, axis=1) <= 0) and np.all(analysis.top_probs.sum(axis=1) <= 1 + 1e-5)
    assert np.all((analysis.rank >= 1) & (analysis.rank <= 256))
    in_top = analysis.top_bytes == analysis.byte_values[:, None]  # (n, K): the actual byte's column, if kept
    assert np.array_equal(in_top.any(axis=1)[1:], analysis.rank[1:] <= TOP_K)  # byte 0: 256 tied guesses
    assert np.all((analysis.entropy >= 0) & (analysis.entropy <= 8 + 1e-5))
    assert np.all(analysis.surprisal >= 0)
    assert analysis.mean_bits_per_byte == pytest.approx(analysis.surprisal.mean())
    assert analysis.block_size == 16
    frame = analysis.to_frame()
    assert list(frame.columns) == ["position", "byte", "char", "surprisal", "entropy"] and len(frame) == n


def test_analyze_bytes_limits_and_errors(model):
    short = analyze_bytes(model, "abcdefgh", max_bytes=5)
    assert short.data == b"abcde"
    was_training = model.training
    model.train()
    analyze_bytes(model, "abc")
    assert model.training  # mode restored
    model.train(was_training)
    empty = analyze_bytes(model, b"")
    assert len(empty) == 0 and empty.surprisal.shape == (0,) and empty.mean_bits_per_byte == 0.0


def test_analysis_in_pieces_equals_one_pass(model, analysis):
    """Small pieces (each re-reading its history) give the figures of one pass over the whole text."""
    pieces = analyze_bytes(model, TEXT, chunk=5, top_k=4)
    np.testing.assert_allclose(pieces.surprisal, analysis.surprisal, atol=1e-4)
    np.testing.assert_allclose(pieces.entropy, analysis.entropy, atol=1e-4)
    np.testing.assert_allclose(pieces.top_probs, analysis.top_probs[:, :4], atol=1e-5)
    assert np.array_equal(pieces.rank, analysis.rank) and pieces.top_k == 4


def test_next_byte_table(analysis):
    table = next_byte_table(analysis, 5, top_k=7)
    assert len(table) == 7 and table["probability"].is_monotonic_decreasing
    assert table["probability"].iloc[0] == pytest.approx(analysis.top_probs[5, 0])
    assert len(next_byte_table(analysis, 5, top_k=100)) == TOP_K  # no more than the analysis kept
    assert byte_label(ord("\n")) == "'\\n'" and byte_label(200) == "0xc8"
    with pytest.raises(IndexError):
        next_byte_table(analysis, len(TEXT))


# ----------------------------------------------------------------------------- views

def test_surprisal_html_one_span_per_byte_and_escapes(analysis):
    page = surprisal_html(analysis, start=0, length=len(TEXT), highlight=3)
    assert page.count("<span") == len(TEXT)
    assert "&lt;" in page and "&amp;" in page and "<world>" not in page
    assert page.count("<br>") == TEXT.count(b"\n")
    highlighted = re.findall(r'<span class="[^"]*blm-hl[^"]*" data-pos="(\d+)"[^>]*outline', page)
    assert highlighted == ["3"]
    window = surprisal_html(analysis, start=10, length=5)
    assert window.count("<span") == 5 and 'data-pos="10"' in window and 'data-pos="15"' not in window
    assert surprisal_html(analysis, vmax=2.0) != surprisal_html(analysis, vmax=8.0)


def test_plots_return_figures(analysis, tmp_path):
    import matplotlib.pyplot as plt

    figures = [plot_byte_histogram(TEXT), plot_surprisal(analysis, window=8), plot_surprisal_vs_entropy(analysis),
               plot_surprisal_text(analysis, length=64, width=16, highlight=4)]
    fig = plot_next_byte(analysis, 6, top_k=12)
    assert len(fig.axes[0].patches) == 12
    actual_bars = [p for p in fig.axes[0].patches if p.get_facecolor()[:3] == matplotlib.colors.to_rgb("tab:orange")]
    assert len(actual_bars) == int(TEXT[6] in next_byte_table(analysis, 6, 12)["byte"].tolist())
    assert plt.get_fignums() == []  # returned closed to pyplot: no duplicate display in notebooks
    path = save_figure(figures[1], tmp_path / "deep" / "surprisal.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
