"""Per-byte trace of a real compression: where the bits of one coded file went.

``compress_with_stats(..., trace=True)`` fills a ``ByteTrace`` from the probabilities the coder actually
coded with (no second pass over the data), so its ``coded_bits`` sum to the ``ideal_bits`` that
``CompressionStats`` reports, and the compressed file is the same with or without it. Arrays are in file
order, one entry per input byte:

* ``coded_bits``: what the coder spent on the byte, -log2 of the probabilities it used (summed over the
  8 binary decisions when mixing; 8 for a byte in a stored segment or a stored file);
* ``model_bits``: the model's own surprisal, -log2(f[byte] / sum f) of the integer frequencies the
  coder or mixer was given (NaN on each segment's first byte, which has no prediction; None without a
  model);
* ``neural_share``: with mixing and a model, the neural inputs' share of the mixer's first layer,
  sum |w*x| over the neural inputs divided by the sum over all inputs, averaged over the byte's 8 bits
  (None otherwise);
* ``segment`` and ``position``: which lock-step stream coded the byte, and where in it (the warm-up
  cost of a segment is the bits at small positions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ByteTrace:
    data: np.ndarray  # (n,) uint8, the input
    coded_bits: np.ndarray  # (n,) float64
    model_bits: np.ndarray | None  # (n,) float64, NaN where the model made no prediction
    neural_share: np.ndarray | None  # (n,) float32 in [0, 1]
    segment: np.ndarray  # (n,) int32
    position: np.ndarray  # (n,) int32
    method: str  # "blm" (model and mixing), "model" (model alone, mixing "none"), "cm" (mixing alone)
    streams: int  # lock-step streams (segments) the file was coded in

    def __len__(self) -> int:
        return len(self.data)

    @property
    def total_bits(self) -> float:
        return float(self.coded_bits.sum())

    def to_frame(self):
        """A pandas DataFrame, one row per byte (and so CSV or Parquet with pandas' writers)."""
        import pandas as pd

        n = len(self.data)
        nan = np.full(n, np.nan)
        return pd.DataFrame({
            "offset": np.arange(n, dtype=np.int64), "byte": self.data, "segment": self.segment,
            "position": self.position, "coded_bits": self.coded_bits,
            "model_bits": self.model_bits if self.model_bits is not None else nan,
            "neural_share": self.neural_share if self.neural_share is not None else nan.astype(np.float32),
        })
