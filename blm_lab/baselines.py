"""Classic compressors behind one signature, and the loop that compares any of them with a neural one.

Every compressor here (and ``blm_lab.codec.NeuralCompressor``) has the same shape: a ``name`` and
``compress(data: bytes) -> bytes`` / ``decompress(blob: bytes) -> bytes``. So the comparison table is a
loop over a registry, and every number in it was decoded and checked against the original.

Sizes count everything the decoder needs except what is shared ahead of time: the container headers
of gzip, xz, zstd and so on, the 8-byte length that PPMd needs to stop, but not a zstd dictionary, a
training split or a model's parameters. Those are shared like a codebook: each row's ``knows`` says
what it was given, ``shared_bytes`` how big that is (a model at 2 bytes per parameter, as in DeepMind's
"Language Modeling Is Compression", Delétang et al. 2024; a dictionary or training split at its size),
and ``adjusted_bits_per_byte`` charges it to the file.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import math
import shlex
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol, runtime_checkable

import brotli
import pandas as pd
import pyppmd
import zstandard

from .errors import BlmError, ConfigError, ExternalProgramError


COLUMNS = [
    "file", "compressor", "knows", "original_bytes", "compressed_bytes", "bits_per_byte", "shared_bytes",
    "adjusted_bits_per_byte", "ratio", "compress_s", "decompress_s", "compress_MBps", "verified",
]
KNOWS_NOTHING = "nothing: the file alone"
# Only present when some compressor reports its ideal code length (``last_stats.ideal_bits``).
MODEL_COLUMNS = ["ideal_bits_per_byte"]
# Only present when some compressor is an external program (its ``version`` line).
PROGRAM_COLUMNS = ["program"]


@runtime_checkable
class Compressor(Protocol):
    """What ``compare`` needs: a name for the table and a lossless byte-to-byte round trip."""

    name: str

    def compress(self, data: bytes) -> bytes: ...

    def decompress(self, blob: bytes) -> bytes: ...


@dataclass(frozen=True)
class Codec:
    """A compressor made of two functions, for libraries whose one-shot calls already round-trip."""

    name: str
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes], bytes]


def _zstd_compress(data: bytes, level: int) -> bytes:
    return zstandard.ZstdCompressor(level=level).compress(data)


def _zstd_decompress(blob: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(blob)  # frames carry their content size


@dataclass(frozen=True)
class PpmdCompressor:
    """PPMd variant H (the model 7-Zip's ``.7z`` PPMd uses), via pyppmd, after an 8-byte length header.

    A raw PPMd stream has no end: the decoder is told how many bytes to produce, so the length is
    stored little-endian in front and counted in the size. Order and memory must match on both sides,
    like any model; they are not stored. The defaults are 7-Zip's default level (order 6, 16 MB).
    """

    max_order: int = 6
    mem_size: int = 16 << 20
    name: str = "ppmd"

    HEADER = struct.Struct("<Q")  # original length

    def compress(self, data: bytes) -> bytes:
        encoder = pyppmd.Ppmd7Encoder(self.max_order, self.mem_size)
        return self.HEADER.pack(len(data)) + encoder.encode(data) + encoder.flush()

    def decompress(self, blob: bytes) -> bytes:
        if len(blob) < self.HEADER.size:
            raise ValueError(f"{self.name}: blob has {len(blob)} bytes, shorter than its {self.HEADER.size}-byte length header")
        (length,) = self.HEADER.unpack_from(blob)
        data = pyppmd.Ppmd7Decoder(self.max_order, self.mem_size).decode(blob[self.HEADER.size:], length)
        if len(data) != length:
            raise ValueError(f"{self.name}: decoded {len(data)} bytes, header says {length}; the blob is truncated or corrupt")
        return data


@dataclass
class ExternalCompressor:
    """A program named by a pair of command templates, e.g. ``ExternalCompressor("paq8px -8 {input} {output}",
    "paq8px -d {input} {output}")``: the strongest compressors are programs, not libraries.

    Each call runs the program in a fresh temporary directory, where ``{input}`` and ``{output}`` stand for
    plain file names there: the original is ``data``, the compressed file ``data.packed`` (``data`` +
    ``suffix``), the decoded one ``restored``. So an archiver that stores a file's name stores the same short
    one every time, and the size is the bytes the program wrote. A template without ``{input}`` reads the
    bytes on standard input, one without ``{output}`` writes them to standard output (``gzip -9 -c {input}``
    / ``gzip -d -c``). No shell runs: a template is split like a shell command line (``shlex``), without
    pipes or redirections.

    ``version`` is the first line the program prints for ``version_command`` (default ``PROGRAM --version``),
    recorded in the comparison's ``program`` column. ``missing`` says why the program cannot run here;
    ``compare`` then leaves it out with a note instead of a row.
    """

    compress_command: str
    decompress_command: str
    name: str = ""  # default: the compress template without its placeholders, e.g. "paq8px -8"
    suffix: str = ".packed"  # the compressed file's extension (zpaq insists on its own)
    version_command: str = ""
    install_hint: str = ""  # how to get the program, for the note when it is missing
    timeout_s: float | None = None
    _version: str | None = field(default=None, init=False, repr=False)

    ORIGINAL, RESTORED = "data", "restored"

    def __post_init__(self):
        for what, template in (("compress", self.compress_command), ("decompress", self.decompress_command)):
            if not shlex.split(template):
                raise ConfigError(f"external compressor {self.name or self.compress_command!r}: the {what} command "
                                  f"is empty; give a program and its arguments, e.g. 'gzip -9 -c {{input}}'")
        self.program = shlex.split(self.compress_command)[0]
        placeholders = ("{input}", "{output}")
        self.name = self.name or " ".join(t for t in shlex.split(self.compress_command) if t not in placeholders)

    @property
    def missing(self) -> str | None:
        """Why the program cannot run here, or None."""
        if shutil.which(self.program) is not None:
            return None
        hint = self.install_hint or "install it, or give its full path in the command"
        return f"{self.program!r} is not installed here (not found on PATH); {hint}"

    @property
    def version(self) -> str:
        """The first line the program prints about itself (stdout, else stderr); empty if it prints nothing."""
        if self._version is None:
            argv = shlex.split(self.version_command) if self.version_command else [self.program, "--version"]
            try:
                done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
            except FileNotFoundError as exc:
                raise ExternalProgramError(f"{self.name}: {self.missing or exc}") from exc
            lines = [line.strip() for out in (done.stdout, done.stderr)
                     for line in out.decode(errors="replace").splitlines() if line.strip()]
            self._version = lines[0] if lines else ""
        return self._version

    def compress(self, data: bytes) -> bytes:
        return self._run(self.compress_command, data, self.ORIGINAL, self.ORIGINAL + self.suffix)

    def decompress(self, blob: bytes) -> bytes:
        return self._run(self.decompress_command, blob, self.ORIGINAL + self.suffix, self.RESTORED)

    def _run(self, template: str, data: bytes, input_name: str, output_name: str) -> bytes:
        argv = [t.replace("{input}", input_name).replace("{output}", output_name) for t in shlex.split(template)]
        reads_file, writes_file = "{input}" in template, "{output}" in template
        command = shlex.join(argv)
        with tempfile.TemporaryDirectory(prefix="blm_external_") as tmp:
            work = Path(tmp)
            if reads_file:
                (work / input_name).write_bytes(data)
            feed = {"stdin": subprocess.DEVNULL} if reads_file else {"input": data}
            try:
                done = subprocess.run(argv, cwd=work, capture_output=True, timeout=self.timeout_s, **feed)
            except FileNotFoundError as exc:
                raise ExternalProgramError(f"{self.name}: {self.missing or exc}") from exc
            except subprocess.TimeoutExpired as exc:
                raise ExternalProgramError(f"{self.name}: `{command}` ran past {self.timeout_s} s; raise timeout_s "
                                           f"or leave it out") from exc
            if done.returncode != 0:
                said = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
                raise ExternalProgramError(f"{self.name}: `{command}` exited with status {done.returncode}"
                                           f"{': ' + said[-1] if said else ''}; check the command template")
            if not writes_file:
                return done.stdout
            if not (work / output_name).is_file():
                raise ExternalProgramError(f"{self.name}: `{command}` wrote no file {output_name!r}; put {{output}} "
                                           f"where the program writes its result (or leave it out to use stdout)")
            return (work / output_name).read_bytes()


def external_compressor(spec: str) -> ExternalCompressor:
    """An ``ExternalCompressor`` from one line, ``[NAME=]COMPRESS | DECOMPRESS``, e.g.
    ``paq8px-8=paq8px -8 {input} {output} | paq8px -d {input} {output}`` (the notebook parameter and
    ``bench_compress.py --external`` take this form)."""
    head, eq, rest = spec.partition("=")
    named = eq and head.strip() and not any(ch.isspace() or ch in "{|" for ch in head.strip())
    name, commands = (head, rest) if named else ("", spec)
    compress_command, bar, decompress_command = commands.partition("|")
    if not bar or not compress_command.strip() or not decompress_command.strip():
        raise ConfigError(f"external compressor {spec!r}: give '[NAME=]COMPRESS | DECOMPRESS', e.g. "
                          f"'gz=gzip -9 -c {{input}} | gzip -d -c {{input}}'")
    return ExternalCompressor(compress_command.strip(), decompress_command.strip(), name=name.strip())


def external_compressors(specs: str | Iterable[str]) -> dict[str, Compressor]:
    """Several ``external_compressor`` lines, by name; a string holds them separated by ``;``."""
    if isinstance(specs, str):
        specs = specs.split(";")
    compressors = [external_compressor(spec) for spec in specs if spec.strip()]
    return {c.name: c for c in compressors}


def zpaq_compressor() -> ExternalCompressor:
    """zpaq 7 (Mahoney) at its strongest method, ``-m5`` (context mixing), from Debian's ``zpaq`` package.

    zpaq is a journaling archiver: it appends ``.zpaq`` to an archive name without one and stores each
    file under its name, so the archive is ``data.zpaq`` and extraction names the stored ``data``. The
    size is the whole archive, its index and the stored name included.
    """
    extract = f"zpaq x {{input}} {ExternalCompressor.ORIGINAL} -to {{output}}"
    return ExternalCompressor("zpaq a {output} {input} -m5", extract, name="zpaq-m5", suffix=".zpaq",
                              version_command="zpaq",
                              install_hint="make run and make test install it where they can (sudo apt-get install zpaq)")


def classic_compressors() -> dict[str, Compressor]:
    """The standard-library and common native compressors at their strongest settings, by name, in table order,
    then zpaq -m5 (an external program: where it is not installed, ``compare`` leaves it out with a note)."""
    codecs = [
        Codec("gzip-9", partial(gzip.compress, compresslevel=9, mtime=0), gzip.decompress),  # mtime=0: same bytes every run
        Codec("bzip2-9", partial(bz2.compress, compresslevel=9), bz2.decompress),
        Codec("xz-9e", partial(lzma.compress, preset=9 | lzma.PRESET_EXTREME), lzma.decompress),
        Codec("zstd-19", partial(_zstd_compress, level=19), _zstd_decompress),
        Codec("brotli-11", partial(brotli.compress, quality=11), brotli.decompress),
        PpmdCompressor(),
        zpaq_compressor(),
    ]
    return {c.name: c for c in codecs}


CLASSIC_COMPRESSORS: dict[str, Compressor] = classic_compressors()


@dataclass
class ZstdDictCompressor:
    """zstd primed with a dictionary trained on the training split: the classic answer to "prior knowledge".

    The dictionary is shared ahead of time like a model's parameters, so compressed sizes do not include
    it; its size is in ``dict_size`` for anyone who wants to charge for it.
    """

    dictionary: zstandard.ZstdCompressionDict
    level: int = 19
    name: str = ""
    knows: str = "a dictionary trained on the training split"
    _compressor: zstandard.ZstdCompressor | None = field(default=None, init=False, repr=False)
    _decompressor: zstandard.ZstdDecompressor | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.name = self.name or f"zstd-{self.level}+dict"

    @property
    def dict_size(self) -> int:
        """Bytes of the shared dictionary (not counted in the compressed sizes)."""
        return len(self.dictionary.as_bytes())

    @property
    def shared_bytes(self) -> int:
        return self.dict_size

    @classmethod
    def from_training(cls, train_bytes: bytes, level: int = 19, dict_size: int = 112_640,
                      sample_size: int = 4096, threads: int = 1) -> "ZstdDictCompressor":
        """Train a dictionary on ``train_bytes`` cut into ``sample_size`` chunks (zstd's COVER, tuned automatically).

        ``dict_size`` defaults to the ``zstd --train`` default (110 KiB). ``threads`` bounds the CPU
        used by the parameter search; training on 1 MB takes a few seconds on one core.
        """
        train_bytes = bytes(train_bytes)
        samples = [train_bytes[i:i + sample_size] for i in range(0, len(train_bytes), sample_size)]
        try:
            dictionary = zstandard.train_dictionary(dict_size, samples, threads=threads)
        except zstandard.ZstdError as exc:
            raise BlmError(
                f"zstd could not train a {dict_size}-byte dictionary from {len(train_bytes)} bytes in "
                f"{len(samples)} samples of {sample_size} bytes ({exc}); give more training bytes "
                f"(about 100x dict_size) or lower dict_size"
            ) from exc
        return cls(dictionary=dictionary, level=level)

    def compress(self, data: bytes) -> bytes:
        if self._compressor is None:
            self._compressor = zstandard.ZstdCompressor(level=self.level, dict_data=self.dictionary)
        return self._compressor.compress(data)

    def decompress(self, blob: bytes) -> bytes:
        if self._decompressor is None:
            self._decompressor = zstandard.ZstdDecompressor(dict_data=self.dictionary)
        return self._decompressor.decompress(blob)


@dataclass
class PrimedPpmdCompressor:
    """PPMd (order 6, 16 MB) that has read the training split before the file: both sides know it.

    The encoder codes ``train + data`` and keeps only what follows the bytes that coding ``train``
    alone emits (``prefix``); the decoder re-codes ``train`` to get that prefix, decodes prefix + blob
    and drops the training bytes. The training split is shared ahead of time, like a model; the 8-byte
    length header is counted.
    """

    train: bytes = field(repr=False)
    max_order: int = 6
    mem_size: int = 16 << 20
    name: str = "ppmd+train"
    knows: str = "the training split (read before the file)"

    @property
    def shared_bytes(self) -> int:
        return len(self.train)

    def _primed_encoder(self):
        encoder = pyppmd.Ppmd7Encoder(self.max_order, self.mem_size)
        return encoder, encoder.encode(self.train)

    def compress(self, data: bytes) -> bytes:
        encoder, _ = self._primed_encoder()
        return PpmdCompressor.HEADER.pack(len(data)) + encoder.encode(data) + encoder.flush()

    def decompress(self, blob: bytes) -> bytes:
        (length,) = PpmdCompressor.HEADER.unpack_from(blob)
        _, prefix = self._primed_encoder()
        decoded = pyppmd.Ppmd7Decoder(self.max_order, self.mem_size).decode(
            prefix + blob[PpmdCompressor.HEADER.size:], len(self.train) + length)
        return decoded[len(self.train):]


@dataclass
class ZstdPrefixCompressor:
    """zstd -19 with the whole training split as a raw-content dictionary (a prefix its matches can reach).

    Like the primed PPMd, the training split is shared ahead of time and not counted.
    """

    train: bytes = field(repr=False)
    level: int = 19
    name: str = "zstd-19+train"
    knows: str = "the training split (as a prefix for matches)"

    @property
    def shared_bytes(self) -> int:
        return len(self.train)

    def _dictionary(self):
        return zstandard.ZstdCompressionDict(self.train, dict_type=zstandard.DICT_TYPE_RAWCONTENT)

    def compress(self, data: bytes) -> bytes:
        window = min(max(10, math.ceil(math.log2(len(self.train) + len(data) + 1))), 27)  # the prefix in reach
        params = zstandard.ZstdCompressionParameters.from_level(self.level, window_log=window, source_size=len(data))
        return zstandard.ZstdCompressor(dict_data=self._dictionary(), compression_params=params).compress(data)

    def decompress(self, blob: bytes) -> bytes:
        return zstandard.ZstdDecompressor(dict_data=self._dictionary(), max_window_size=1 << 27).decompress(blob)


def _model_stats(compressor) -> tuple[float | None, int]:
    """(ideal_bits or None, shared_bytes) a compressor reports after ``compress``."""
    stats = getattr(compressor, "last_stats", None)
    ideal_bits = getattr(stats, "ideal_bits", None) if stats is not None else getattr(compressor, "ideal_bits", None)
    return ideal_bits, int(getattr(compressor, "shared_bytes", 0))


def _first_difference(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _per_byte(numerator: float, original_bytes: int) -> float:
    return numerator / original_bytes if original_bytes else math.nan


def compare(files: Mapping[str, bytes], compressors: Mapping[str, Compressor] | Iterable[Compressor],
            *, verify: bool = True, progress: bool = True) -> pd.DataFrame:
    """Compress and decompress every file with every compressor; one row per pair, timed and checked.

    ``files`` is a mapping name -> bytes (read them with ``blm_lab.files.read_input``). ``compressors`` is
    a mapping label -> compressor (e.g. ``CLASSIC_COMPRESSORS``) or a list of them (labelled by ``.name``).
    Every round trip is checked: ``verified`` is False where the decoded bytes differ or decoding fails,
    and with ``verify=True`` (the default) that raises ``RuntimeError`` naming the file and compressor.
    Where a compressor reports its ideal code length (``last_stats.ideal_bits``), the ``MODEL_COLUMNS``
    are added; they are NaN for the other rows. Where one is an external program, its ``version`` line is in
    the ``program`` column. A compressor that cannot run here (its ``missing`` says why) gives a printed note
    instead of a row; the notes are also in the table's ``attrs["notes"]``.
    """
    from tqdm.auto import tqdm

    file_bytes = {str(name): bytes(data) for name, data in files.items()}
    if isinstance(compressors, Mapping):
        labelled = list(compressors.items())
    else:
        labelled = [(c.name, c) for c in compressors]
    notes = [f"{name} left out: {getattr(c, 'missing')}" for name, c in labelled if getattr(c, "missing", None)]
    for note in notes:
        print(f"note: {note}")
    labelled = [(name, c) for name, c in labelled if not getattr(c, "missing", None)]
    rows = []
    with tqdm(total=len(file_bytes) * len(labelled), desc="compare", disable=not progress) as bar:
        for file, data in file_bytes.items():
            for name, compressor in labelled:
                bar.set_postfix_str(f"{file} / {name}")
                rows.append(_measure(file, data, name, compressor, verify))
                bar.update()
    if not rows:
        df = pd.DataFrame(columns=COLUMNS)
    else:
        df = pd.DataFrame(rows)
        optional = [c for c in MODEL_COLUMNS + PROGRAM_COLUMNS if df[c].notna().to_numpy().any()]
        df = df[COLUMNS + optional]
    df.attrs["notes"] = notes
    return df


def _measure(file: str, data: bytes, name: str, compressor: Compressor, verify: bool) -> dict:
    n = len(data)
    t0 = time.perf_counter()
    try:
        blob = compressor.compress(data)
    except Exception as exc:
        raise RuntimeError(f"compressor {name!r} failed to compress file {file!r} ({n} bytes): {exc!r}") from exc
    compress_s = time.perf_counter() - t0
    ideal_bits, shared = _model_stats(compressor)  # read before decompress, which may reset them

    t0 = time.perf_counter()
    try:
        decoded = compressor.decompress(blob)
        problem = None if decoded == data else (
            f"decoded {len(decoded)} bytes that differ from the {n} original bytes "
            f"(first difference at byte {_first_difference(decoded, data)})")
    except Exception as exc:
        decoded, problem = None, f"decompress raised {exc!r}"
    decompress_s = time.perf_counter() - t0 if decoded is not None else math.nan
    if problem and verify:
        raise RuntimeError(f"round trip failed: compressor {name!r} on file {file!r} {problem}; "
                           f"the compressor is broken: fix it or leave it out of the comparison")

    m = len(blob)
    return {
        "file": file,
        "compressor": name,
        "knows": getattr(compressor, "knows", KNOWS_NOTHING),
        "original_bytes": n,
        "compressed_bytes": m,
        "bits_per_byte": _per_byte(8 * m, n),
        "shared_bytes": shared,
        "adjusted_bits_per_byte": _per_byte(8 * (m + shared), n),
        "ratio": n / m if m else math.nan,
        "compress_s": compress_s,
        "decompress_s": decompress_s,
        "compress_MBps": n / 1e6 / compress_s if compress_s > 0 else math.nan,
        "verified": problem is None,
        "ideal_bits_per_byte": _per_byte(ideal_bits, n) if ideal_bits is not None else math.nan,
        "program": getattr(compressor, "version", None),
    }


FLOAT_FORMATS = {
    "bits_per_byte": ".3f", "ideal_bits_per_byte": ".3f", "adjusted_bits_per_byte": ".3f",
    "ratio": ".3f",
    "compress_s": ".4f", "decompress_s": ".4f", "compress_MBps": ".2f",
}


def table_markdown(df: pd.DataFrame) -> str:
    """The comparison as a Markdown table, with a sensible number of digits per column."""
    return df.to_markdown(index=False, floatfmt=tuple(FLOAT_FORMATS.get(c, "g") for c in df.columns))


# ----------------------------------------------------------------------------- the workbench's registry and reports

def primed_compressors(train_bytes: bytes) -> dict[str, Compressor]:
    """The classic compressors that know the training split: PPMd that has read it first, zstd with it as
    a prefix, and zstd with a dictionary trained on it.

    The dictionary is at most zstd's default 110 KiB and at most a tenth of the training bytes, since
    zstd needs many samples per dictionary byte; a corpus too small to train one leaves that one out.
    """
    primed: dict[str, Compressor] = {}
    for compressor in (PrimedPpmdCompressor(train_bytes), ZstdPrefixCompressor(train_bytes)):
        primed[compressor.name] = compressor
    dict_size = min(112_640, len(train_bytes) // 10)
    sample_size = max(256, min(4096, len(train_bytes) // 64))
    try:
        zstd_dict = ZstdDictCompressor.from_training(train_bytes, dict_size=dict_size, sample_size=sample_size)
    except BlmError as exc:
        print(f"note: no zstd dictionary: {exc}")
        return primed
    primed[zstd_dict.name] = zstd_dict
    return primed


def neural_report(table: pd.DataFrame) -> pd.DataFrame:
    """The model's rows: actual vs ideal bits per byte, the coder's overhead, speed and the size-adjusted ratio."""
    if "ideal_bits_per_byte" not in table:  # no compressor in the table reported a model
        return pd.DataFrame()
    rows = table[table["ideal_bits_per_byte"].notna()]
    report = rows[["file", "compressor", "original_bytes", "bits_per_byte", "ideal_bits_per_byte", "shared_bytes",
                   "adjusted_bits_per_byte", "ratio", "compress_s", "decompress_s", "verified"]].copy()
    report["overhead_percent"] = 100 * (report["bits_per_byte"] / report["ideal_bits_per_byte"] - 1)
    report["compress_KBps"] = report["original_bytes"] / 1024 / report["compress_s"]
    report["decompress_KBps"] = report["original_bytes"] / 1024 / report["decompress_s"]
    return report.reset_index(drop=True)


def bits_per_byte_by_compressor(table: pd.DataFrame) -> dict[str, float]:
    """Compressed bits per original byte for each compressor, over all files together."""
    totals = table.groupby("compressor", sort=False)[["compressed_bytes", "original_bytes"]].sum()
    return {name: 8.0 * row.compressed_bytes / row.original_bytes if row.original_bytes else math.nan
            for name, row in totals.iterrows()}
