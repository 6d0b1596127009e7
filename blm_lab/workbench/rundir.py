"""The run directory: one typed contract shared by the notebooks that write it and the runner that reads it.

The four notebooks chain through files in one directory::

    manifest.json          01  the corpus manifest (every file: name, offset, size, sha256)
    corpus.json            01  CorpusRecord: where the corpus came from and how it is split
    checkpoint/best.pt     02  the model (plus checkpoint/metrics.jsonl and result.json)
    train.json             02  TrainRecord: the training run's headline numbers
    compression.csv/.md    04  the comparison table (``baselines.compare``)
    traces.npz             04  per-byte traces of blm, the model alone and cm alone (``codec.trace.ByteTrace``)
    lab.json               05  LabRecord: patch and bits figures of notebook 05
    figures/NAME.png       all every figure a notebook shows
    summary.json           runner  Summary: the headline numbers of the whole run

Each JSON file is a dataclass here, written and read only through ``RunDir``, so a field cannot be
renamed on one side and not the other.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..baselines import bits_per_byte_by_compressor, neural_report, table_markdown
from ..bits import kind_table
from ..codec.trace import ByteTrace
from ..data import Corpus, check_length, corpus_paths, load_corpus
from ..errors import BlmError
from ..files import atomic_write, read_input
from ..patching import patch_table

__all__ = ["RunDir", "CorpusRecord", "TrainRecord", "NeuralRecord", "LabRecord", "Summary"]


def _json_default(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _write_json(path: Path, payload: dict) -> Path:
    text = json.dumps(payload, indent=2, default=_json_default) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


@dataclass
class CorpusRecord:
    """``corpus.json``: the corpus 01 loaded and how it is split (the last ``val_fraction`` is held out)."""

    data_dir: str  # absolute paths, comma-separated; empty = the embedded default corpus
    val_fraction: float
    block_size: int
    source: str
    total_bytes: int
    train_bytes: int
    val_bytes: int
    sha256: str
    files: int

    def split_frame(self) -> pd.DataFrame:
        """The split as a two-row table: bytes and share of the corpus in each part."""
        rows = [("train", self.train_bytes), ("validation (held out)", self.val_bytes)]
        return pd.DataFrame([{"split": name, "bytes": n, "share": n / self.total_bytes} for name, n in rows])


@dataclass
class TrainRecord:
    """``train.json``: what 02's training run measured (validation = the held-out split)."""

    best_val_bpb: float
    final_val_bpb: float
    best_step: int
    num_params: int
    flops_per_token: float
    steps: int
    tokens: int
    elapsed_s: float
    tokens_per_s: float
    output_dir: str
    checkpoint: str
    device_info: dict
    model_config: dict
    train_config: dict
    history: list  # every validation record: step, epoch, train_bpb, val_bpb, tokens_per_s, lr, elapsed_s

    def frame(self) -> pd.DataFrame:
        keys = ["best_val_bpb", "final_val_bpb", "steps", "best_step", "tokens", "elapsed_s", "tokens_per_s",
                "num_params", "checkpoint"]
        return pd.DataFrame({"value": [getattr(self, k) for k in keys]}, index=keys)


HEADLINE_COMPRESSOR = "blm"  # 04's row that summary.json reports: the model mixed with the file's statistics


@dataclass
class NeuralRecord:
    """The headline compressor's figures from 04's table (``HEADLINE_COMPRESSOR``), weighted by input size."""

    ideal_bits_per_byte: float
    adjusted_bits_per_byte: float  # the model's parameters charged at 2 bytes each
    compress_KBps: float
    decompress_KBps: float


@dataclass
class LabRecord:
    """``lab.json``: notebook 05's headline figures, and what they were measured on."""

    measured_on: str  # e.g. "validation split (held out), first 65,536 bytes"
    bytes: int
    model_bits_per_byte: float  # the model's own mean surprisal on those bytes (analyze_bytes)
    target_mean_length: float
    patches: list  # one row of patching.patch_table per rule and its fixed-stride baseline
    bits_by_kind: dict  # source (blm, model, cm, or the model's surprisal) -> kind -> bits per byte
    traced_bytes: int | None = None  # bytes of 04's traces (None: the run has none)
    compare_checkpoint: str = ""
    compare_net_bits: float | None = None  # bits of compare_checkpoint minus the run's checkpoint

    @classmethod
    def measure(cls, measured_on: str, analysis, target_mean_length: float, patchings, sources,
                traced_bytes: int | None = None, compare_checkpoint: str = "", wins: pd.DataFrame | None = None):
        """The record of what 05 computed: ``patching.solve_rules``' list, ``bits.bit_sources``, and the
        wins table of ``bits.compare_bits`` when a second checkpoint was compared."""
        def plain(frame: pd.DataFrame) -> pd.DataFrame:  # JSON has no NaN: missing figures are null
            return frame.astype(object).where(frame.notna(), None)

        kinds = plain(kind_table(sources))
        by_kind = {c: dict(kinds[c]) for c in kinds.columns if c != "share_of_bytes"}
        net = None if wins is None else float(wins.set_index("kind").loc["all", "net_bits"])
        return cls(measured_on=measured_on, bytes=len(analysis), model_bits_per_byte=analysis.mean_bits_per_byte,
                   target_mean_length=float(target_mean_length),
                   patches=plain(patch_table(patchings)).to_dict("records"), bits_by_kind=by_kind,
                   traced_bytes=traced_bytes, compare_checkpoint=compare_checkpoint, compare_net_bits=net)


@dataclass
class Summary:
    """``summary.json``: the headline numbers of one run; parts whose notebook did not run are None."""

    run_dir: str
    parameters: dict
    timings_s: dict
    corpus: CorpusRecord | None = None
    training: TrainRecord | None = None
    compressed_bits_per_byte: dict = field(default_factory=dict)  # compressor -> bits per byte over every input
    compression_input_bytes: int | None = None
    all_round_trips_verified: bool | None = None
    neural: NeuralRecord | None = None
    lab: LabRecord | None = None

    @classmethod
    def from_dict(cls, payload: dict) -> "Summary":
        nested = {"corpus": CorpusRecord, "training": TrainRecord, "neural": NeuralRecord, "lab": LabRecord}
        values = dict(payload)
        for name, kind in nested.items():
            if values.get(name) is not None:
                values[name] = kind(**values[name])
        return cls(**values)

    def headline(self) -> dict:
        """The few numbers `blm-lab run` prints."""
        out = {"corpus_bytes": self.corpus.total_bytes if self.corpus else None}
        if self.training:
            out["val_bits_per_byte"] = self.training.final_val_bpb
        if self.compressed_bits_per_byte:
            out["compressed_bits_per_byte"] = self.compressed_bits_per_byte
        out["timings_s"] = self.timings_s
        return out


class RunDir:
    """One run directory (see the module docstring); created on first use."""

    MANIFEST = "manifest.json"
    CORPUS = "corpus.json"
    TRAIN = "train.json"
    CHECKPOINT_DIR = "checkpoint"
    COMPRESSION = "compression"  # .csv and .md
    FIGURES = "figures"
    SUMMARY = "summary.json"
    TRACES = "traces.npz"
    LAB = "lab.json"
    TRACE_FIELDS = ("data", "coded_bits", "model_bits", "neural_share", "segment", "position")

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        self.path.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------ 01: the corpus and its split

    def write_corpus(self, corpus: Corpus, data_dir: str, val_fraction: float, block_size: int) -> CorpusRecord:
        """Check both splits hold a window of ``block_size + 1`` bytes; write ``manifest.json`` and ``corpus.json``."""
        train_data, val_data = corpus.split(val_fraction)
        check_length(train_data, block_size, "Training split")
        check_length(val_data, block_size, "Validation split")
        manifest = corpus.manifest()
        # absolute paths, so that later notebooks find the corpus from any working directory (papermill or Lab)
        record = CorpusRecord(
            data_dir=",".join(str(Path(p).expanduser().resolve()) for p in corpus_paths(str(data_dir or ""))),
            val_fraction=val_fraction, block_size=block_size, source=corpus.source, total_bytes=len(corpus),
            train_bytes=int(train_data.shape[0]), val_bytes=int(val_data.shape[0]), sha256=manifest["sha256"],
            files=len(corpus.files))
        _write_json(self.path / self.MANIFEST, manifest)
        _write_json(self.path / self.CORPUS, asdict(record))
        return record

    def corpus_record(self) -> CorpusRecord:
        path = self.path / self.CORPUS
        if not path.is_file():
            raise BlmError(f"{path} not found: the run directory has no corpus description; "
                           "run 01_data_prep.ipynb first with the same run_dir")
        return CorpusRecord(**json.loads(path.read_text()))

    def load_corpus(self) -> tuple[Corpus, CorpusRecord]:
        """The corpus 01 described, checked against its sha256."""
        record = self.corpus_record()
        corpus = load_corpus(record.data_dir)
        sha = corpus.manifest()["sha256"]
        if sha != record.sha256:
            raise BlmError(f"the corpus at {record.data_dir or 'the embedded default'!r} changed since 01_data_prep ran "
                           f"(sha256 {sha[:12]}..., recorded {record.sha256[:12]}...); run 01_data_prep.ipynb again")
        return corpus, record

    def splits(self) -> tuple[bytes, bytes]:
        """(training bytes, held-out validation bytes) of the run's corpus."""
        corpus, record = self.load_corpus()
        train_data, val_data = corpus.split(record.val_fraction)
        return train_data.tobytes(), val_data.tobytes()

    # ------------------------------------------------------------------ 02: training

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / self.CHECKPOINT_DIR

    def checkpoint(self, override: str = "") -> Path:
        """``override`` when given, else the run's ``checkpoint/best.pt``."""
        return Path(override).expanduser() if override else self.checkpoint_dir / "best.pt"

    def write_train(self, result, train_cfg, model_cfg, device_info: dict) -> TrainRecord:
        """Write ``train.json`` from a TrainResult and the two configs it was trained with."""
        summary = result.summary()
        record = TrainRecord(**summary, device_info=device_info, model_config=model_cfg.to_dict(),
                             train_config=dataclasses.asdict(train_cfg), history=list(result.history))
        _write_json(self.path / self.TRAIN, asdict(record))
        return record

    def train_record(self) -> TrainRecord | None:
        path = self.path / self.TRAIN
        return TrainRecord(**json.loads(path.read_text())) if path.is_file() else None

    # ------------------------------------------------------------------ 03 and 04: inputs and tables

    def entropy_input(self, text: str = "", file: str = "", max_bytes: int = 4096) -> dict:
        """Keyword arguments for ``make_explorer``: the text, else the file, else the start of the held-out split.

        The validation sample is written to ``validation_sample.bin`` (its first ``max_bytes`` bytes),
        so the explorer's file field shows what was analysed.
        """
        if text:
            return {"text": text}
        if file:
            return {"file": file}
        _, val = self.splits()
        sample = self.path / "validation_sample.bin"
        atomic_write(sample, lambda f: f.write(val[:max_bytes]))
        return {"file": str(sample)}

    def compression_inputs(self, files="", max_bytes: int = 0) -> dict[str, bytes]:
        """What 04 compresses: ``files`` (a path, a comma-separated string or a list), else the held-out split.

        ``max_bytes`` > 0 keeps only the first bytes of each input.
        """
        if isinstance(files, str):
            files = [f.strip() for f in files.split(",") if f.strip()]
        if files:
            inputs = {Path(f).name: read_input(f, "file to compress") for f in files}
        else:
            inputs = {"validation split (held out)": self.splits()[1]}
        return {name: data[:max_bytes] if max_bytes else data for name, data in inputs.items()}

    def write_compression(self, table: pd.DataFrame) -> tuple[Path, Path]:
        """Write ``compression.csv`` and ``compression.md`` (``baselines.table_markdown``)."""
        csv_path, md_path = self.path / f"{self.COMPRESSION}.csv", self.path / f"{self.COMPRESSION}.md"
        csv_text, md_text = table.to_csv(index=False), table_markdown(table) + "\n"
        atomic_write(csv_path, lambda f: f.write(csv_text.encode()))
        atomic_write(md_path, lambda f: f.write(md_text.encode()))
        return csv_path, md_path

    def compression_table(self) -> pd.DataFrame | None:
        path = self.path / f"{self.COMPRESSION}.csv"
        return pd.read_csv(path) if path.is_file() else None

    def write_traces(self, traces) -> Path | None:
        """Write ``traces.npz`` from ``{name: ByteTrace}`` (names as 04's compressor rows); None values are skipped.

        Nothing is written when no trace is given (the codec made none), and None is returned.
        """
        traces = {name: t for name, t in dict(traces).items() if t is not None}
        if not traces:
            return None
        arrays = {"names": np.array(list(traces)), "methods": np.array([t.method for t in traces.values()]),
                  "streams": np.array([t.streams for t in traces.values()], dtype=np.int64)}
        for i, trace in enumerate(traces.values()):
            for name in self.TRACE_FIELDS:
                value = getattr(trace, name)
                if value is not None:
                    arrays[f"{i}.{name}"] = np.asarray(value)
        return atomic_write(self.path / self.TRACES, lambda f: np.savez(f, **arrays))

    def traces(self) -> dict[str, ByteTrace]:
        """The traces 04 wrote, by name ({} when the run has none)."""
        path = self.path / self.TRACES
        if not path.is_file():
            return {}
        with np.load(path) as z:
            out = {}
            for i, (name, method) in enumerate(zip(z["names"].tolist(), z["methods"].tolist())):
                fields = {f: z[f"{i}.{f}"] if f"{i}.{f}" in z.files else None for f in self.TRACE_FIELDS}
                out[name] = ByteTrace(**fields, method=method, streams=int(z["streams"][i]))
        return out

    def write_lab(self, record: LabRecord) -> Path:
        return _write_json(self.path / self.LAB, asdict(record))

    def lab_record(self) -> LabRecord | None:
        path = self.path / self.LAB
        return LabRecord(**json.loads(path.read_text())) if path.is_file() else None

    # ------------------------------------------------------------------ figures and the summary

    def figure(self, name: str) -> Path:
        """Where a notebook's figure NAME goes: ``figures/NAME.png`` (``viz.figures.show_and_save`` writes it)."""
        return self.path / self.FIGURES / f"{name}.png"

    def write_summary(self, parameters: dict, timings: dict) -> Summary:
        """``summary.json`` from what the notebooks wrote."""
        training = self.train_record()
        summary = Summary(run_dir=str(self.path), parameters=dict(parameters),
                          timings_s={k: round(v, 2) for k, v in timings.items()},
                          corpus=self.corpus_record() if (self.path / self.CORPUS).is_file() else None,
                          training=training, lab=self.lab_record())
        if training:
            summary.timings_s["training"] = round(training.elapsed_s, 2)
        table = self.compression_table()
        if table is not None:
            summary.compressed_bits_per_byte = bits_per_byte_by_compressor(table)
            summary.compression_input_bytes = int(table.groupby("compressor")["original_bytes"].sum().iloc[0])
            summary.all_round_trips_verified = bool(table["verified"].all())
            neural = neural_report(table)
            neural = neural[neural["compressor"] == HEADLINE_COMPRESSOR] if len(neural) else neural
            if len(neural):
                weights = neural["original_bytes"] / neural["original_bytes"].sum()
                summary.neural = NeuralRecord(
                    ideal_bits_per_byte=float((neural["ideal_bits_per_byte"] * weights).sum()),
                    adjusted_bits_per_byte=float((neural["adjusted_bits_per_byte"] * weights).sum()),
                    compress_KBps=float(neural["original_bytes"].sum() / 1024 / neural["compress_s"].sum()),
                    decompress_KBps=float(neural["original_bytes"].sum() / 1024 / neural["decompress_s"].sum()))
        _write_json(self.path / self.SUMMARY, asdict(summary))
        return summary

    def summary(self) -> Summary:
        return Summary.from_dict(json.loads((self.path / self.SUMMARY).read_text()))

