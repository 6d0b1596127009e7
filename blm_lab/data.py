"""Corpora as raw bytes: files, directories or lists of them; windows; the train/validation split.

A corpus is the concatenation of its files' bytes, in the order given, each directory expanded
recursively in sorted path order. Bytes live in one numpy uint8 array: a memory map for a single
file, one contiguous array (or, past ``MAX_IN_MEMORY_BYTES``, a memory-mapped concatenation on disk)
for several. With no path, the embedded default corpus is built from text that ships with Python.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from .errors import CorpusError

MAX_IN_MEMORY_BYTES = 256 * 2**20  # several files larger than this are concatenated into a memory-mapped file

# The embedded default corpus: the Python reference manual's text plus a fixed list of standard-library
# modules (prose-heavy docstrings and code). Each entry lists the paths tried, relative to the stdlib.
DEFAULT_CORPUS_FILES = [
    ("pydoc_data/topics.py",),
    ("argparse.py",),
    ("dataclasses.py",),
    ("difflib.py",),
    ("textwrap.py",),
    ("statistics.py",),
    ("fractions.py",),
    ("functools.py",),
    ("heapq.py",),
    ("bisect.py",),
    ("shlex.py",),
    ("string.py",),
    ("random.py",),
    ("csv.py",),
    ("json/decoder.py",),
    ("json/encoder.py",),
    ("calendar.py", "calendar/__init__.py"),
    ("pathlib.py", "pathlib/__init__.py"),
    ("collections/__init__.py",),
    ("inspect.py",),
]


@dataclass
class CorpusFile:
    name: str  # path as given (or relative to the stdlib for the default corpus)
    offset: int  # where its bytes start in the corpus
    size: int
    sha256: str


@dataclass
class Corpus:
    """Raw bytes plus the manifest that traces where they came from."""

    data: np.ndarray  # uint8, 1-D (possibly a np.memmap)
    files: list[CorpusFile]
    source: str  # "default" or the paths given
    python_version: str = field(default_factory=lambda: sys.version.split()[0])

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def manifest(self) -> dict:
        return {
            "source": self.source,
            "total_bytes": len(self),
            "sha256": hashlib.sha256(memoryview(np.ascontiguousarray(self.data))).hexdigest(),
            "python_version": self.python_version,
            "files": [vars(f).copy() for f in self.files],
        }

    def manifest_frame(self):
        import pandas as pd

        return pd.DataFrame([vars(f) for f in self.files], columns=["name", "offset", "size", "sha256"])

    def split(self, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        return split_bytes(self.data, val_fraction)

    def tobytes(self) -> bytes:
        return self.data.tobytes()


PRINTABLE = range(0x20, 0x7F)  # printable ASCII, space included


def byte_label(value: int) -> str:
    """A readable label for a byte value: repr of the character for ASCII ('a', ' ', '\\n'), hex otherwise."""
    value = int(value)
    return repr(chr(value)) if value < 0x80 else f"0x{value:02x}"


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


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def expand_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Files of the corpus, in order: each path as given; directories recursively in sorted path order."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise CorpusError(f"corpus path does not exist: {str(raw)!r}; check the path, or pass no path to use "
                              "the embedded default corpus")
        if p.is_dir():
            found = sorted((q for q in p.rglob("*") if q.is_file()), key=lambda q: q.as_posix())
            if not found:
                raise CorpusError(f"corpus directory {str(raw)!r} contains no files; add files or point at another directory")
            files.extend(found)
        else:
            files.append(p)
    for f in files:
        if not os.access(f, os.R_OK):
            raise CorpusError(f"cannot read corpus file {str(f)!r} (permission denied); fix its permissions or leave it out")
    return files


def corpus_paths(spec: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[str]:
    """The paths a corpus spec names: a path, a comma-separated list of paths (spaces around commas are
    ignored; a path that exists as given is never split), or a sequence. Empty means the default corpus."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return []
    if isinstance(spec, os.PathLike) or (isinstance(spec, str) and Path(spec).expanduser().exists()):
        return [str(spec)]
    if isinstance(spec, str):
        return [p.strip() for p in spec.split(",") if p.strip()]
    return [str(p) for p in spec]


def load_corpus(paths: str | os.PathLike | Sequence[str | os.PathLike] | None = None) -> Corpus:
    """Read a file, a directory (recursively, sorted) or a list of them as raw bytes.

    ``paths`` is anything ``corpus_paths`` reads; ``None`` or an empty string gives the embedded
    default corpus (``default_corpus()``).
    """
    paths = corpus_paths(paths)
    if not paths:
        return default_corpus()
    files = expand_paths(paths)
    sizes = [f.stat().st_size for f in files]
    total = sum(sizes)
    if total == 0:
        raise CorpusError(f"corpus {_describe(paths)} is empty (0 bytes in {len(files)} file(s)); add data")
    entries, offset = [], 0
    try:
        if len(files) == 1:
            data = np.memmap(files[0], dtype=np.uint8, mode="r")
        elif total <= MAX_IN_MEMORY_BYTES:
            data = np.empty(total, dtype=np.uint8)
            for f, n in zip(files, sizes):
                with open(f, "rb") as fh:
                    got = fh.readinto(memoryview(data)[offset:offset + n])
                if got != n:
                    raise CorpusError(f"corpus file {str(f)!r} changed size while being read; retry")
                offset += n
        else:
            data = _concat_to_memmap(files, total)
    except PermissionError as exc:
        raise CorpusError(f"cannot read corpus file {exc.filename!r} (permission denied); fix its permissions or leave it out") from None
    except IsADirectoryError as exc:  # pragma: no cover - expand_paths filters directories
        raise CorpusError(f"expected a file, got a directory: {exc.filename!r}") from None
    except OSError as exc:
        raise CorpusError(f"cannot read corpus file {exc.filename!r}: {exc.strerror}; check the file") from None
    offset = 0
    for f, n in zip(files, sizes):
        entries.append(CorpusFile(name=str(f), offset=offset, size=n, sha256=_sha256_file(f)))
        offset += n
    return Corpus(data=data, files=entries, source=_describe(paths))


def _concat_to_memmap(files: list[Path], total: int) -> np.ndarray:
    fd, tmp = tempfile.mkstemp(prefix="blm_corpus_", suffix=".bin")
    with os.fdopen(fd, "wb") as out:
        for f in files:
            with open(f, "rb") as fh:
                while block := fh.read(1 << 24):
                    out.write(block)
    data = np.memmap(tmp, dtype=np.uint8, mode="r", shape=(total,))
    os.unlink(tmp)  # the mapping keeps the bytes alive; nothing is left behind on disk
    return data


def _describe(paths) -> str:
    if isinstance(paths, (str, os.PathLike)):
        return str(paths)
    return ", ".join(str(p) for p in paths)


def default_corpus() -> Corpus:
    """The embedded default corpus: text shipped with every CPython (about 1.4 MB), built offline.

    The manifest records each file's name, size and sha256 and the Python version, since the text
    differs a little between Python releases.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    chosen: list[tuple[str, Path]] = []
    for candidates in DEFAULT_CORPUS_FILES:
        for rel in candidates:
            if (stdlib / rel).is_file():
                chosen.append((rel, stdlib / rel))
                break
    if not chosen:
        raise CorpusError(f"no default-corpus files found under {stdlib}; pass a corpus path instead")
    blobs = [p.read_bytes() for _, p in chosen]
    data = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    entries, offset = [], 0
    for (rel, _), blob in zip(chosen, blobs):
        entries.append(CorpusFile(name=rel, offset=offset, size=len(blob), sha256=hashlib.sha256(blob).hexdigest()))
        offset += len(blob)
    return Corpus(data=data, files=entries, source="default")


def split_bytes(data: np.ndarray, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split: the last ``val_fraction`` of the bytes are validation (nanoGPT's split)."""
    if not 0.0 <= val_fraction < 1.0:
        raise CorpusError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = int(data.shape[0])
    cut = int(n * (1.0 - val_fraction))
    return data[:cut], data[cut:]


def check_length(data: np.ndarray, block_size: int, what: str = "Corpus") -> None:
    need = block_size + 1
    if data.shape[0] < need:
        raise CorpusError(f"{what} is shorter than block_size + 1: {data.shape[0]} bytes < {need}; "
                          f"lower --block-size (to at most {max(1, data.shape[0] - 1)}) or add data")


class ByteWindows(torch.utils.data.Dataset):
    """Windows of block_size + 1 bytes taken every ``stride`` bytes: (x, y) with y = x shifted by one.

    ``set_epoch(e)`` shifts every window start by a per-epoch offset in [0, stride) (deterministic in
    seed and epoch) so that later epochs see the text cut at other places; epoch 0 is unshifted.
    ``__getitems__`` gathers a whole batch with one numpy fancy-index.
    """

    def __init__(self, data: np.ndarray, block_size: int, stride: int | None = None, seed: int = 0, what: str = "Corpus"):
        check_length(data, block_size, what)
        self.data = data
        self.block_size = block_size
        self.stride = stride or block_size
        if self.stride < 1:
            raise CorpusError(f"stride must be at least 1, got {self.stride}")
        self.seed = seed
        self.offset = 0
        self._span = np.arange(block_size + 1)

    def set_epoch(self, epoch: int) -> None:
        if epoch == 0 or self.stride == 1:
            self.offset = 0
            return
        room = int(self.data.shape[0]) - (len(self) - 1) * self.stride - (self.block_size + 1)
        rng = np.random.default_rng([self.seed, epoch])
        self.offset = int(rng.integers(0, min(self.stride, room + 1)))

    def __len__(self) -> int:
        return (int(self.data.shape[0]) - self.block_size - 1) // self.stride + 1

    def _gather(self, indices) -> torch.Tensor:
        starts = np.asarray(indices, dtype=np.int64) * self.stride + self.offset
        chunk = self.data[starts[:, None] + self._span[None, :]]  # (B, block_size + 1)
        return torch.from_numpy(chunk.astype(np.int64))

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        w = self._gather([i % len(self)])[0]
        return w[:-1], w[1:]

    def __getitems__(self, indices):
        w = self._gather(indices)
        return w[:, :-1], w[:, 1:]


def iter_windows(data: np.ndarray, block_size: int, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping evaluation windows in order (the tail that does not fill a window is dropped)."""
    ds = ByteWindows(data, block_size, stride=block_size)
    for s in range(0, len(ds), batch_size):
        yield ds.__getitems__(range(s, min(len(ds), s + batch_size)))
