"""Where the bits go (blm_lab.bits), on ByteTrace objects built from known probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from blm_lab.bits import (BYTE_KINDS, bits_by_kind, bits_by_position, byte_kinds, check_vocabulary, compare_bits,
                          costliest_spans, cumulative_bits, methods_frame)
from blm_lab.codec.trace import ByteTrace
from blm_lab.errors import CheckpointError, ConfigError

DATA = b"<p>Ab 12, x\xc3\xa9</p>\n"


def trace(data: bytes, probabilities, method: str, streams: int = 1) -> ByteTrace:
    """A trace whose coder spent -log2 p on each byte, the bytes cut into ``streams`` equal segments."""
    n = len(data)
    p = np.asarray(probabilities, dtype=np.float64)
    segment_bytes = -(-n // streams)
    offsets = np.arange(n)
    return ByteTrace(data=np.frombuffer(data, np.uint8).copy(), coded_bits=-np.log2(p), model_bits=None,
                     neural_share=None, segment=(offsets // segment_bytes).astype(np.int32),
                     position=(offsets % segment_bytes).astype(np.int32), method=method, streams=streams)


def test_byte_kinds():
    kinds = [BYTE_KINDS[k] for k in byte_kinds(DATA)]
    assert kinds[:3] == ["markup", "letter", "markup"]
    assert kinds[3:11] == ["letter", "letter", "whitespace", "digit", "digit", "punctuation", "whitespace", "letter"]
    assert kinds[11:13] == ["non-ASCII or binary"] * 2 and kinds[-1] == "whitespace"


def test_bits_by_kind_sums_the_trace():
    p = np.full(len(DATA), 0.5)
    p[1] = 1 / 8  # 'p': 3 bits
    p[11:13] = 1 / 256  # é: 8 bits each
    t = trace(DATA, p, "blm")
    table = bits_by_kind(t.data, t.coded_bits).set_index("kind")
    assert table["bits"].sum() == pytest.approx(t.total_bits)
    assert table.loc["non-ASCII or binary", "bits"] == pytest.approx(16.0)
    assert table.loc["letter", "bytes"] == 5 and table.loc["letter", "bits"] == pytest.approx(3 + 4 * 1)
    assert table["share_of_bits"].sum() == pytest.approx(1.0) and table["share_of_bytes"].sum() == pytest.approx(1.0)


def test_bits_by_position_shows_the_warm_up():
    data = bytes(range(32))
    p = np.where(np.arange(32) % 8 == 0, 1 / 256, 0.5)  # each of 4 streams pays 8 bits for its first byte
    t = trace(data, p, "cm", streams=4)
    table = bits_by_position(t.position, t.coded_bits)
    assert table["first"].tolist() == [0, 1, 2, 4] and table["last"].tolist() == [0, 1, 3, 7]
    assert table["bytes"].tolist() == [4, 4, 8, 16]
    assert table["bits_per_byte"].tolist() == pytest.approx([8.0, 1.0, 1.0, 1.0])
    assert table["bits"].sum() == pytest.approx(t.total_bits)


def test_cumulative_and_costliest_spans():
    data = b"aaaaaaaaaaXYZaaaaaaaaaaaaQaaaa"
    p = np.full(len(data), 0.5)
    p[10:13] = 1 / 64  # XYZ: 6 bits each
    p[25] = 1 / 16  # Q: 4 bits
    cum = cumulative_bits(-np.log2(p))
    assert cum[-1] == pytest.approx((-np.log2(p)).sum()) and np.all(np.diff(cum) > 0)
    spans = costliest_spans(data, -np.log2(p), width=3, count=2, context=2)
    assert spans["start"].tolist() == [10, 23]  # three windows hold Q; ties go to the earliest
    first = spans.iloc[0]
    assert first["span"] == "XYZ" and first["before"] == "aa" and first["after"] == "aa"
    assert first["bits"] == pytest.approx(18.0) and first["bits_per_byte"] == pytest.approx(6.0)
    assert spans.iloc[1]["bits"] == pytest.approx(6.0)  # Q and two a's, not overlapping XYZ
    assert len(costliest_spans(b"", [], width=4)) == 0
    assert len(costliest_spans(b"ab", [1.0, 2.0], width=10)) == 1


def test_methods_frame_and_compare_bits():
    blm = trace(DATA, np.full(len(DATA), 0.5), "blm")
    cm = trace(DATA, np.where(np.arange(len(DATA)) < 5, 0.25, 0.9), "cm")
    frame = methods_frame({"blm": blm, "cm": cm})
    assert list(frame.columns) == ["offset", "byte", "kind", "blm", "cm"] and len(frame) == len(DATA)
    assert frame["blm"].sum() == pytest.approx(blm.total_bits)
    per_byte, wins = compare_bits(DATA, blm.coded_bits, cm.coded_bits, names=("blm", "cm"))
    overall = wins.set_index("kind").loc["all"]
    assert overall["blm_wins"] == 5 and overall["cm_wins"] == len(DATA) - 5
    assert overall["blm_saves_bits"] == pytest.approx(5 * (2 - 1))
    assert overall["net_bits"] == pytest.approx(cm.total_bits - blm.total_bits)
    assert per_byte["difference"].sum() == pytest.approx(overall["net_bits"])
    other = trace(DATA[:-1] + b"!", np.full(len(DATA), 0.5), "model")
    with pytest.raises(ConfigError, match="other data"):
        methods_frame({"blm": blm, "model": other})
    with pytest.raises(ConfigError, match="one value per byte"):
        bits_by_kind(DATA, [1.0])


def test_vocabulary_check_names_the_difference():
    check_vocabulary({"vocab_size": 256, "block_size": 64}, {"vocab_size": 256, "block_size": 512})
    with pytest.raises(CheckpointError, match="vocabulary of 512 symbols.*256"):
        check_vocabulary({"vocab_size": 256}, {"vocab_size": 512})


def test_traces_round_trip_through_the_run_directory(tmp_path):
    from blm_lab.workbench.rundir import RunDir

    run = RunDir(tmp_path / "run")
    assert run.traces() == {} and run.write_traces({"blm": None}) is None  # a codec without traces writes nothing
    blm = trace(DATA, np.linspace(0.1, 0.9, len(DATA)), "blm", streams=2)
    blm.model_bits = blm.coded_bits + 0.5
    blm.neural_share = np.full(len(DATA), 0.25, np.float32)
    cm = trace(DATA, np.full(len(DATA), 0.5), "cm")
    run.write_traces({"blm": blm, "cm": cm})
    back = run.traces()
    assert list(back) == ["blm", "cm"] and back["blm"].method == "blm" and back["blm"].streams == 2
    for name in ("data", "coded_bits", "model_bits", "neural_share", "segment", "position"):
        assert np.array_equal(getattr(back["blm"], name), getattr(blm, name))
    assert back["cm"].model_bits is None and back["cm"].total_bits == pytest.approx(cm.total_bits)
