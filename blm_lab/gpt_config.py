"""BytesGPT's configuration: the dataclass and its option names, without torch.

Its own module so that what only needs the config (the command line's flags and ``--help``, the recipes,
checkpoint headers) can be imported without torch; ``blm_lab.gpt`` re-exports all of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import ConfigError

MLP_KINDS = ("gelu", "relu2")
NORM_KINDS = ("layernorm", "rmsnorm")


@dataclass
class BytesGPTConfig:
    block_size: int = 128  # bytes of context the model sees (training window, KV-cache length)
    vocab_size: int = 256  # one token per byte value
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False  # biases in Linear and LayerNorm layers
    rope_base: float = 10000.0  # rotary frequency base
    mlp_ratio: int = 4  # hidden width of the MLP, in multiples of n_embd
    mlp: str = "gelu"  # MLP activation: "gelu" (exact, erf) or "relu2" (ReLU squared, as in modded-nanoGPT)
    norm: str = "layernorm"  # "layernorm" or "rmsnorm" (no mean subtraction, no bias)
    qk_norm: bool = False  # RMS-normalise each head's queries and keys (learnable gain) before the rotation
    tie_embeddings: bool = True  # the output head shares the input embedding's weights
    value_residual: bool = False  # every layer after the first mixes the first layer's values into its own

    def __post_init__(self):
        if self.mlp not in MLP_KINDS:
            raise ConfigError(f"mlp={self.mlp!r} is not one of {', '.join(MLP_KINDS)}")
        if self.norm not in NORM_KINDS:
            raise ConfigError(f"norm={self.norm!r} is not one of {', '.join(NORM_KINDS)}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; pick n_embd as a multiple of n_head")
        if (self.n_embd // self.n_head) % 2:
            raise ConfigError(f"head size n_embd/n_head = {self.n_embd // self.n_head} must be even for rotary embeddings")
        if self.block_size < 1:
            raise ConfigError(f"block_size must be at least 1, got {self.block_size}")

    def to_dict(self) -> dict:
        return asdict(self)
