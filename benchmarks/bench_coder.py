"""Throughput and overhead of blm_lab.codec.coder on realistic byte distributions, with a verified round trip.

Distributions are float32 softmaxes of random logits at a temperature that puts their entropy near
2-3 bits (like a byte-level LM on text); symbols are sampled from them. A pool of ``--pool`` distinct
batch steps is cycled so memory stays small (50 steps of 256 x 256 int64 frequencies are 26 MB, so
the coder reads them from L3 or RAM; in a model loop they arrive warm from quantize(), and
``--pool 1`` shows that case). Encode and decode are timed on precomputed frequencies;
quantize() is timed separately, per batch step. Rates are given by wall clock and by this process's
CPU time (numpy runs single-threaded here), for the fastest of ``--repeats`` runs.

    python benchmarks/bench_coder.py --streams 256 --steps 2000
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from blm_lab.codec.coder import PRECISION, BatchDecoder, BatchEncoder, ideal_bits, quantize


@dataclass
class BenchConfig:
    streams: int = 256
    steps: int = 2000
    vocab: int = 256
    temperature: float = 0.25  # logits are N(0, 1) / temperature; 0.25 gives about 2.6 bits over 256 symbols
    pool: int = 50  # distinct batch steps of distributions, cycled
    repeats: int = 3  # timed runs; the fastest is reported
    seed: int = 0


def parse_args() -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in vars(BenchConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    return BenchConfig(**vars(parser.parse_args()))


class Timer:
    """Wall-clock and process CPU seconds of a block."""

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def softmax_pool(config: BenchConfig, rng: np.random.Generator) -> np.ndarray:
    """float32 probs (pool, B, V), a softmax of random logits as a model would give."""
    logits = rng.standard_normal((config.pool, config.streams, config.vocab), dtype=np.float32) / config.temperature
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return probs / probs.sum(axis=-1, keepdims=True)


def sample_symbols(probs: np.ndarray, config: BenchConfig, rng: np.random.Generator) -> np.ndarray:
    """Symbols (steps, B): step t draws from the pool entry t % pool, by inverse cdf."""
    cdf = np.cumsum(probs, axis=-1, dtype=np.float64)  # (pool, B, V)
    symbols = np.empty((config.steps, config.streams), dtype=np.int64)
    for step in range(config.steps):
        pool_cdf = cdf[step % config.pool]
        uniform = rng.random(config.streams)[:, None] * pool_cdf[:, -1:]  # (B, 1)
        symbols[step] = np.minimum((pool_cdf < uniform).sum(axis=-1), config.vocab - 1)
    return symbols


def encode(freqs: np.ndarray, symbols: np.ndarray, config: BenchConfig):
    """The streams, their code length before the flush, and the time of the encode steps."""
    encoder = BatchEncoder(config.streams)
    with Timer() as encode_time:
        for step in range(config.steps):
            encoder.encode(freqs[step % config.pool], symbols[step])
    committed_bits = float(encoder.code_length_bits().sum())
    return encoder.finish(), committed_bits, encode_time


def decode(streams: list[bytes], freqs: np.ndarray, symbols: np.ndarray, config: BenchConfig) -> Timer:
    """Time of the decode steps; exits if any decoded symbol differs from the encoded one."""
    decoder = BatchDecoder(streams)
    decoded = np.empty_like(symbols)
    with Timer() as decode_time:
        for step in range(config.steps):
            decoded[step] = decoder.decode(freqs[step % config.pool])
    if not np.array_equal(decoded, symbols):
        raise SystemExit("round trip FAILED: decoded symbols differ from the encoded ones")
    return decode_time


def rate(symbols: int, seconds: float) -> str:
    return f"{symbols / seconds:>12,.0f} symbols/s"


def main() -> None:
    config = parse_args()
    rng = np.random.default_rng(config.seed)
    probs = softmax_pool(config, rng)
    symbols = sample_symbols(probs, config, rng)

    quantize_times, encode_times, decode_times = [], [], []
    for _ in range(config.repeats):  # the fastest repeat is reported: the least disturbed by other work
        with Timer() as quantize_time:
            pool_freqs = [quantize(pool_probs) for pool_probs in probs]
        freqs = np.stack(pool_freqs)  # (pool, B, V)
        streams, committed_bits, encode_time = encode(freqs, symbols, config)
        decode_time = decode(streams, freqs, symbols, config)
        quantize_times.append(quantize_time)
        encode_times.append(encode_time)
        decode_times.append(decode_time)
    quantize_time = min(quantize_times, key=lambda timer: timer.wall)
    encode_time = min(encode_times, key=lambda timer: timer.wall)
    decode_time = min(decode_times, key=lambda timer: timer.wall)

    num_symbols = config.steps * config.streams
    ideal = sum(ideal_bits(freqs[step % config.pool], symbols[step]) for step in range(config.steps))
    actual = 8 * sum(len(data) for data in streams)
    entropy = float(-(probs * np.log2(np.maximum(probs, 1e-30))).sum(axis=-1).mean())
    per_step = 1e6 / config.steps
    rows = [
        ("streams x steps", f"{config.streams} x {config.steps}  (V={config.vocab}, precision={PRECISION})"),
        ("mean entropy", f"{entropy:.3f} bits/symbol"),
        ("encode (wall)", f"{rate(num_symbols, encode_time.wall)}  {encode_time.wall * per_step:7.1f} us/step"),
        ("encode (cpu)", f"{rate(num_symbols, encode_time.cpu)}  {encode_time.cpu * per_step:7.1f} us/step"),
        ("decode (wall)", f"{rate(num_symbols, decode_time.wall)}  {decode_time.wall * per_step:7.1f} us/step"),
        ("decode (cpu)", f"{rate(num_symbols, decode_time.cpu)}  {decode_time.cpu * per_step:7.1f} us/step"),
        ("quantize (wall)", f"{1e6 * quantize_time.wall / config.pool:.1f} us/step"),
        ("quantize (cpu)", f"{1e6 * quantize_time.cpu / config.pool:.1f} us/step"),
        ("ideal bits", f"{ideal:,.1f}  ({ideal / num_symbols:.4f} bits/symbol)"),
        ("bits before flush", f"{committed_bits:,.1f}"),
        ("actual bits", f"{actual:,}"),
        ("coding overhead", f"{100 * (committed_bits - ideal) / ideal:.5f} %  (before flush)"),
        ("total overhead", f"{100 * (actual - ideal) / ideal:.5f} %  (with flush)"),
        ("flush bytes/stream", f"{(actual - committed_bits) / 8 / config.streams:.2f}"),
        ("round trip", "ok"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
