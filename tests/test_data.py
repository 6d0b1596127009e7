"""Corpora as raw bytes: file order, the manifest, windows, the split, errors, the default corpus."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile

import numpy as np
import pytest
import torch

import blm_lab.data as data_mod
from blm_lab.data import ByteWindows, check_length, default_corpus, iter_windows, load_corpus, split_bytes
from blm_lab.errors import BlmError, CorpusError


def write(path, content: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


# ----------------------------------------------------------------------------- ordering and the manifest


def test_directory_is_read_recursively_in_sorted_path_order(tmp_path):
    root = tmp_path / "corpus"
    # created out of order, nested two levels deep
    write(root / "zeta.txt", b"Z" * 5)
    write(root / "b" / "inner" / "deep.txt", b"D" * 3)
    write(root / "alpha.txt", b"A" * 4)
    write(root / "b" / "beta.txt", b"B" * 2)
    write(root / "c" / "gamma.bin", bytes([0, 255, 7]))
    corpus = load_corpus(root)
    assert corpus.tobytes() == b"AAAA" + b"BB" + b"DDD" + bytes([0, 255, 7]) + b"ZZZZZ"
    expected = ["alpha.txt", "b/beta.txt", "b/inner/deep.txt", "c/gamma.bin", "zeta.txt"]
    assert [os.path.relpath(f.name, root).replace(os.sep, "/") for f in corpus.files] == expected


def test_list_of_paths_is_concatenated_in_given_order(tmp_path):
    a = write(tmp_path / "a.txt", b"first ")
    b = write(tmp_path / "b.txt", b"second ")
    d = tmp_path / "d"
    write(d / "2.txt", b"four")
    write(d / "1.txt", b"three ")
    corpus = load_corpus([b, d, a])
    assert corpus.tobytes() == b"second three fourfirst "
    corpus = load_corpus([str(a), str(b)])
    assert corpus.tobytes() == b"first second "


def test_manifest_offsets_sizes_and_sha256(tmp_path):
    contents = [b"hello world\n", bytes(range(256)), b"", b"x" * 1000]
    paths = [write(tmp_path / f"f{i}.bin", c) for i, c in enumerate(contents)]
    corpus = load_corpus(paths)
    manifest = corpus.manifest()
    raw = b"".join(contents)
    assert manifest["total_bytes"] == len(raw) == len(corpus)
    assert manifest["sha256"] == hashlib.sha256(raw).hexdigest()
    assert manifest["python_version"] == sys.version.split()[0]
    offset = 0
    for entry, path, content in zip(manifest["files"], paths, contents):
        assert entry["name"] == str(path)
        assert entry["offset"] == offset
        assert entry["size"] == len(content)
        assert entry["sha256"] == hashlib.sha256(content).hexdigest()
        assert raw[entry["offset"]: entry["offset"] + entry["size"]] == content
        offset += len(content)
    frame = corpus.manifest_frame()
    assert list(frame.columns) == ["name", "offset", "size", "sha256"]
    assert frame["size"].tolist() == [len(c) for c in contents]


# ----------------------------------------------------------------------------- windows


def ramp(n: int) -> np.ndarray:
    return (np.arange(n) % 251).astype(np.uint8)  # 251 is prime: no window repeats by accident


@pytest.mark.parametrize("n,block_size,stride", [(17, 16, None), (100, 16, None), (100, 16, 1), (100, 16, 7),
                                                 (64, 8, 3), (33, 16, 16), (1000, 10, 33)])
def test_window_count_and_contents(n, block_size, stride):
    data = ramp(n)
    ds = ByteWindows(data, block_size, stride=stride)
    step = stride or block_size
    starts = [s for s in range(0, n, step) if s + block_size + 1 <= n]  # every window that fits
    assert len(ds) == len(starts) == (n - block_size - 1) // step + 1
    for i, s in enumerate(starts):
        x, y = ds[i]
        assert x.dtype == torch.int64 and x.shape == (block_size,) and y.shape == (block_size,)
        assert x.tolist() == data[s: s + block_size].tolist()
        assert y.tolist() == data[s + 1: s + block_size + 1].tolist()
        assert torch.equal(x[1:], y[:-1])


def test_getitems_equals_stacked_getitem():
    ds = ByteWindows(ramp(500), 16, stride=5)
    indices = [0, 3, len(ds) - 1, 7, 3]
    xs, ys = ds.__getitems__(indices)
    assert xs.shape == ys.shape == (5, 16)
    assert torch.equal(xs, torch.stack([ds[i][0] for i in indices]))
    assert torch.equal(ys, torch.stack([ds[i][1] for i in indices]))


def test_iter_windows_covers_data_in_order():
    data = ramp(16 * 10 + 5)
    batches = list(iter_windows(data, 16, batch_size=3))
    xs = torch.cat([x for x, _ in batches])
    assert [len(x) for x, _ in batches] == [3, 3, 3, 1]
    assert xs.reshape(-1).tolist() == data[: 16 * 10].tolist()


@pytest.mark.parametrize("n,block_size,stride", [(100, 16, 16), (100, 16, 7), (34, 16, 16), (40, 16, 16),
                                                 (1000, 10, 33), (18, 16, 5)])
def test_set_epoch_offset_in_bounds_and_deterministic(n, block_size, stride):
    data = ramp(n)
    ds = ByteWindows(data, block_size, stride=stride, seed=3)
    twin = ByteWindows(data, block_size, stride=stride, seed=3)
    offsets = []
    for epoch in range(30):
        ds.set_epoch(epoch)
        twin.set_epoch(epoch)
        assert ds.offset == twin.offset
        assert 0 <= ds.offset < stride
        offsets.append(ds.offset)
        last = len(ds) - 1
        start = last * stride + ds.offset
        assert start + block_size + 1 <= n
        x, y = ds[last]  # fancy indexing past the end would raise
        assert x.tolist() == data[start: start + block_size].tolist()
        assert y.tolist() == data[start + 1: start + block_size + 1].tolist()
    assert offsets[0] == 0
    room = n - (len(ds) - 1) * stride - (block_size + 1)
    if min(stride, room + 1) > 1:
        assert len(set(offsets)) > 1  # later epochs really do cut the text elsewhere
    ds.set_epoch(0)
    assert ds.offset == 0


def test_set_epoch_depends_on_seed():
    data = ramp(5000)
    a = ByteWindows(data, 16, seed=1)
    b = ByteWindows(data, 16, seed=2)
    seen_a, seen_b = [], []
    for epoch in range(1, 10):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        seen_a.append(a.offset)
        seen_b.append(b.offset)
    assert seen_a != seen_b


def test_stride_must_be_positive():
    with pytest.raises(CorpusError, match="stride"):
        ByteWindows(ramp(100), 16, stride=-1)


# ----------------------------------------------------------------------------- the split


def test_split_is_the_last_tenth_nanogpt_cut():
    n = 1_115_394  # tiny-shakespeare's size
    data = ramp(n)
    train, val = split_bytes(data)
    assert len(val) == 111_540
    assert len(train) == int(n * 0.9) == 1_003_854
    assert np.array_equal(np.concatenate([train, val]), data)
    assert np.array_equal(val, data[-111_540:])


@pytest.mark.parametrize("n,fraction,n_val", [(10, 0.1, 1), (100, 0.1, 10), (101, 0.1, 11), (1000, 0.25, 250),
                                              (50, 0.0, 0)])
def test_split_sizes(n, fraction, n_val):
    train, val = split_bytes(ramp(n), fraction)
    assert (len(train), len(val)) == (n - n_val, n_val)


def test_split_rejects_bad_fraction():
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(CorpusError, match="val_fraction"):
            split_bytes(ramp(10), bad)


@pytest.mark.shared
def test_tinyshakespeare_split(shared_dir):
    path = shared_dir / "corpora" / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    corpus = load_corpus(path)
    train, val = corpus.split()
    assert len(corpus) == 1_115_394
    assert (len(train), len(val)) == (1_003_854, 111_540)
    assert val.tobytes() == path.read_bytes()[-111_540:]


# ----------------------------------------------------------------------------- errors


def test_missing_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(CorpusError, match="does not exist") as info:
        load_corpus(missing)
    assert str(missing) in str(info.value)
    assert isinstance(info.value, BlmError)
    with pytest.raises(CorpusError, match="does not exist"):
        load_corpus([write(tmp_path / "ok.txt", b"data"), missing])


def test_empty_directory(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)  # subdirectories alone are no files
    with pytest.raises(CorpusError, match="contains no files"):
        load_corpus(empty)


def test_zero_byte_files(tmp_path):
    write(tmp_path / "d" / "a.txt", b"")
    write(tmp_path / "d" / "b.txt", b"")
    with pytest.raises(CorpusError, match="is empty"):
        load_corpus(tmp_path / "d")


def test_unreadable_file_chmod(tmp_path):
    locked = write(tmp_path / "locked.txt", b"secret bytes")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as root: permissions are not enforced (see the monkeypatched tests)")
        with pytest.raises(CorpusError, match="permission denied"):
            load_corpus(locked)
    finally:
        locked.chmod(0o644)


def test_unreadable_file_access_check(tmp_path, monkeypatch):
    """The permission check before reading: os.access says no for one file of a directory."""
    write(tmp_path / "d" / "a.txt", b"readable")
    locked = write(tmp_path / "d" / "b.txt", b"locked")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if os.path.samefile(p, locked) else real_access(p, mode, *a, **k))
    with pytest.raises(CorpusError, match="permission denied") as info:
        load_corpus(tmp_path / "d")
    assert str(locked) in str(info.value)


@pytest.mark.parametrize("n_files", [1, 3])
def test_unreadable_file_at_read_time(tmp_path, monkeypatch, n_files):
    """A file that passes the check but cannot be opened (permissions changed in between): the OS error is
    raised where the bytes are read (np.memmap for one file, open() for several) and becomes a CorpusError."""
    paths = [write(tmp_path / f"f{i}.txt", b"some bytes %d" % i) for i in range(n_files)]
    locked = paths[-1]

    def deny(path):
        if os.path.samefile(path, locked):
            raise PermissionError(13, "Permission denied", str(path))

    real_open, real_memmap = open, np.memmap
    monkeypatch.setattr(data_mod, "open", lambda f, *a, **k: (deny(f), real_open(f, *a, **k))[1], raising=False)

    class DenyingMemmap(np.memmap):
        def __new__(cls, filename, *args, **kwargs):
            deny(filename)
            return real_memmap.__new__(real_memmap, filename, *args, **kwargs)

    monkeypatch.setattr(data_mod.np, "memmap", DenyingMemmap)
    with pytest.raises(CorpusError, match="permission denied") as info:
        load_corpus(paths if n_files > 1 else locked)
    assert str(locked) in str(info.value)


def test_corpus_shorter_than_block_size_plus_one(tmp_path):
    short = write(tmp_path / "short.txt", b"0123456789")
    corpus = load_corpus(short)
    with pytest.raises(CorpusError) as info:
        ByteWindows(corpus.data, 16)
    message = str(info.value)
    assert message.startswith("Corpus is shorter than block_size + 1")
    assert "10" in message and "17" in message
    check_length(ramp(17), 16)  # exactly block_size + 1 is enough
    assert len(ByteWindows(ramp(17), 16)) == 1


# ----------------------------------------------------------------------------- the default corpus and memory maps


def test_default_corpus():
    corpus = default_corpus()
    assert 1_000_000 <= len(corpus) <= 2_000_000
    manifest = corpus.manifest()
    assert manifest["source"] == "default"
    assert manifest["python_version"] == sys.version.split()[0]
    assert len(manifest["files"]) >= 10
    raw = corpus.tobytes()
    assert sum(f["size"] for f in manifest["files"]) == len(raw) == manifest["total_bytes"]
    for f in manifest["files"]:
        assert set(f) >= {"name", "size", "sha256", "offset"}
        assert hashlib.sha256(raw[f["offset"]: f["offset"] + f["size"]]).hexdigest() == f["sha256"]
    again = default_corpus()
    assert again.manifest() == manifest
    assert again.tobytes() == raw
    assert load_corpus(None).manifest() == manifest
    assert load_corpus("").manifest() == manifest


def test_single_file_is_memory_mapped(tmp_path):
    payload = np.random.default_rng(0).integers(0, 256, 3 * 2**20, dtype=np.uint8).tobytes()
    path = write(tmp_path / "big.bin", payload)
    corpus = load_corpus(path)
    assert isinstance(corpus.data, np.memmap)
    assert corpus.data.dtype == np.uint8 and corpus.data.shape == (len(payload),)
    assert corpus.tobytes() == payload
    train, val = corpus.split()
    assert len(val) == len(payload) - int(len(payload) * 0.9)


def test_many_files_past_the_memory_limit_are_memory_mapped(tmp_path, monkeypatch):
    paths = [write(tmp_path / "d" / f"{i}.bin", bytes([i]) * 100) for i in range(4)]
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setattr(data_mod, "MAX_IN_MEMORY_BYTES", 250)
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    corpus = load_corpus(tmp_path / "d")
    assert isinstance(corpus.data, np.memmap)
    assert corpus.tobytes() == b"".join(p.read_bytes() for p in paths)
    assert list(spill.iterdir()) == []  # the concatenation leaves nothing on disk
