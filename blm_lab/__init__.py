"""blm_lab: byte-level language modelling and neural compression, as a Jupyter research workbench."""

from .checkpoint import load_checkpoint, save_checkpoint
from .codec.neural import NeuralCompressor, compress, compress_with_stats, decompress, decompress_with_stats
from .data import ByteWindows, Corpus, default_corpus, load_corpus, split_bytes
from .errors import BlmError
from .gpt import BytesGPT, BytesGPTConfig, KVCache, decode, encode
from .scoring import bits_per_byte
from .training.config import TrainConfig
from .training.loop import train

__version__ = "0.2.0"

__all__ = [
    "BlmError", "ByteWindows", "BytesGPT", "BytesGPTConfig", "Corpus", "KVCache", "NeuralCompressor", "TrainConfig",
    "bits_per_byte", "compress", "compress_with_stats", "decode", "decompress", "decompress_with_stats",
    "default_corpus", "encode", "load_checkpoint", "load_corpus", "save_checkpoint", "split_bytes", "train",
]
