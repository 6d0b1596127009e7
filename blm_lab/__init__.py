"""blm_lab: byte-level language modelling and neural compression, as a Jupyter research workbench."""

from .compress import NeuralCompressor, compress, compress_with_stats, decompress, decompress_with_stats
from .checkpoint import load_checkpoint, save_checkpoint
from .data import Corpus, ByteWindows, default_corpus, load_corpus, split_bytes
from .errors import BlmError
from .gpt import BytesGPT, BytesGPTConfig, KVCache, decode, encode
from .train import TrainConfig, bits_per_byte, train

__version__ = "0.1.0"
