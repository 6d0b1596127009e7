"""BytesGPT: a compact GPT over raw bytes (vocabulary of 256), with rotary positions and a rolling KV cache.

The whole model is this file, top to bottom: rotary helpers, attention, MLP, block, model. Its config,
``BytesGPTConfig``, is in ``gpt_config.py`` (no torch there, so ``--help`` starts fast) and re-exported here.

Positions are rotary (RoPE), so attention depends only on the distance between two bytes. That is
what lets the KV cache *roll*: after ``block_size`` bytes the oldest key/value slot is overwritten
and every later byte still sees exactly ``block_size`` bytes of context (itself and the
``block_size - 1`` before it), which is the context the model was trained with. Compression of
long files relies on it: the cost per byte is O(block_size), never O(n).

Architecture options (``BytesGPTConfig``), each off by default so the plain GPT-2 shape stays the
reference: ``mlp="relu2"`` (ReLU squared), ``norm="rmsnorm"``, ``qk_norm`` (RMS-normalised queries and
keys per head), ``tie_embeddings=False`` (a separate, zero-initialised output head) and
``value_residual`` (every layer after the first mixes the first layer's values into its own with a
learnable weight, as in ResFormer and modded-nanoGPT). The KV cache stores keys and (mixed) values
exactly as the full-sequence pass computes them, so ``step()`` equals ``forward()`` under every option.

Adding a model option: 12 edits in 7 files, plus notebook 02's parameters (and their list in test_runner):
1. here: the ``BytesGPTConfig`` field (a new ``mlp``/``norm`` kind goes into ``MLP_KINDS``/``NORM_KINDS``,
   which the portable numerics import), and the module code it changes (``forward`` and ``step`` share it);
2. ``checkpoint.VERSION_1_DEFAULTS``: the value that reproduces checkpoints saved before the option;
3. ``training/config.py``: ``settings_frame``'s ``model_keys`` (and ``RECIPE_MODEL`` if the recipe adopts it);
4. ``tests/conftest.py``: an ``ARCHITECTURE_OPTIONS`` entry, which ``test_model_options`` and
   ``test_portable`` (the two backends against each other and against this float model) then run
   (``test_portable`` fails while a kind or a boolean field of the config has no case);
5. ``codec/portable/model.py``: ``from_float`` reads the option's parameters through this module tree and
   stores them, ``_check_tensors`` names them, ``runtime`` puts them on the device, ``_arithmetic_revision``
   counts the option, and the docstring states its arithmetic;
6. ``codec/portable/reference.py``: its torch ops;
7. ``codec/portable/cpu.py``: the same ops in the kernel, and ``CpuBackend``'s arrays for its parameters.
The option names and kinds come from here; the portable code holds no copy of them or of parameter names.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .gpt_config import MLP_KINDS, NORM_KINDS, BytesGPTConfig  # noqa: F401 (the config lives there, torch-free)

__all__ = ["BytesGPTConfig", "BytesGPT", "KVCache", "encode", "decode"]


# ----------------------------------------------------------------------------- rotary positions

@functools.lru_cache(maxsize=16)
def _inverse_frequencies(head_size: int, base: float, device: torch.device) -> torch.Tensor:
    """(head_size/2,) float64 rotary frequencies; cached, since step() needs them for every byte."""
    return base ** (-torch.arange(0, head_size, 2, dtype=torch.float64, device=device) / head_size)


def rotary_cos_sin(positions: torch.Tensor, head_size: int, base: float, dtype: torch.dtype):
    """cos/sin tables (T, head_size/2) for integer ``positions`` (T,).

    Angles are computed in float64 and then cast: at position 10^6 a float32 angle would be off by
    ~0.06 rad, which would blur the relative positions of a long file's rolling KV cache.
    """
    inv_freq = _inverse_frequencies(head_size, float(base), positions.device)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (T, hs/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the last dim. x: (B, nh, T, hs), cos/sin: (T, hs/2)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


# ----------------------------------------------------------------------------- KV cache

class KVCache:
    """A rolling key/value cache for incremental decoding of B streams in lock-step.

    Each layer owns ``k`` and ``v`` of shape (B, nh, block_size, hs). The byte at absolute position
    ``p`` is written to slot ``p % block_size``; keys are stored already rotated for their absolute
    position, so the slot order does not matter (attention is a sum over slots). After
    ``block_size`` bytes every step overwrites the oldest slot: the context is always the last
    ``block_size`` bytes, including the current one.
    """

    def __init__(self, config: BytesGPTConfig, batch_size: int, device=None, dtype=torch.float32):
        hs = config.n_embd // config.n_head
        shape = (batch_size, config.n_head, config.block_size, hs)
        self.block_size = config.block_size
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.pos = 0  # absolute position of the next byte to be fed

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0]


# ----------------------------------------------------------------------------- the model

NORM_EPS = 1e-5


class Norm(nn.Module):
    """LayerNorm (optional bias) or RMSNorm over the last dim, with a learnable gain."""

    def __init__(self, ndim: int, kind: str = "layernorm", bias: bool = False):
        super().__init__()
        self.kind = kind
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias and kind == "layernorm" else None

    def forward(self, x):
        if self.kind == "rmsnorm":
            return F.rms_norm(x, self.weight.shape, self.weight, NORM_EPS)
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, NORM_EPS)


WINDOW_CHUNK = 16  # window_logits' default chunk, in block sizes: its history is recomputed once per chunk


def banded_attention(q, k, v, window: int):
    """Causal attention in which position t sees only t-window+1 .. t, in time and memory linear in T.

    q, k, v: (B, nh, T, hs). The queries are cut into blocks of ``window``; block b attends to its own
    keys and block b-1's under one (window, 2 window) band mask, so nothing of size T^2 is built.
    """
    B, nh, T, hs = q.shape
    W = window
    nb = -(-T // W)
    pad = nb * W - T  # padded positions come after every real query, so the band hides them
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    qb, kb, vb = (t.view(B, nh, nb, W, hs) for t in (q, k, v))  # (B, nh, nb, W, hs)
    keys = torch.cat([F.pad(kb, (0, 0, 0, 0, 1, 0))[:, :, :-1], kb], dim=3)  # (B, nh, nb, 2W, hs): block b-1, then b
    values = torch.cat([F.pad(vb, (0, 0, 0, 0, 1, 0))[:, :, :-1], vb], dim=3)  # (B, nh, nb, 2W, hs)
    i = torch.arange(W, device=q.device)[:, None]  # query offset in its block
    j = torch.arange(2 * W, device=q.device)[None, :]  # key offset from the previous block's start
    band = (j > i) & (j <= i + W)  # (W, 2W): key position in (t - W, t]
    mask = band.expand(nb, W, 2 * W).clone()  # (nb, W, 2W)
    mask[0, :, :W] = False  # block 0 has no previous block
    # 4-d, blocks in the batch dimension: (B * nb, nh, W or 2W, hs), so SDPA takes its fused kernel
    qb, keys, values = (t.transpose(1, 2).reshape(B * nb, nh, -1, hs) for t in (qb, keys, values))
    y = F.scaled_dot_product_attention(qb, keys, values, attn_mask=mask.repeat(B, 1, 1)[:, None])  # (B*nb, nh, W, hs)
    return y.view(B, nb, nh, W, hs).transpose(1, 2).reshape(B, nh, nb * W, hs)[:, :, :T]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: BytesGPTConfig, first_layer: bool = False):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.head_size = config.n_embd // config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.q_norm = Norm(self.head_size, "rmsnorm") if config.qk_norm else None
        self.k_norm = Norm(self.head_size, "rmsnorm") if config.qk_norm else None
        # value residual: v <- (1 - mix) v + mix v_first, with v_first the first layer's values
        self.v_mix = nn.Parameter(torch.tensor(0.5)) if config.value_residual and not first_layer else None

    def _qkv(self, x, cos, sin, v_first):
        """Rotated queries and keys and the (mixed) values, each (B, nh, T, hs); and this layer's values for v_first."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # (B, T, C) each
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.v_mix is not None:
            v = v + self.v_mix * (v_first - v)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def forward(self, x, cos, sin, window=None, v_first=None):
        """Full-sequence attention. x: (B, T, C). window None means plain causal; an int W means each
        position attends to the W positions ending at itself (the rolling cache's view). Returns (y, values)."""
        B, T, C = x.shape
        q, k, v = self._qkv(x, cos, sin, v_first)
        if window is None:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)  # (B, nh, T, hs)
        else:
            y = banded_attention(q, k, v, window)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y)), v

    def step(self, x, cos, sin, k_cache, v_cache, slot: int, filled: int, v_first=None):
        """One new position per stream. x: (B, 1, C); caches (B, nh, block_size, hs). Returns (y, values)."""
        B, _, C = x.shape
        q, k, v = self._qkv(x, cos, sin, v_first)  # (B, nh, 1, hs) each
        k_cache[:, :, slot] = k[:, :, 0]
        v_cache[:, :, slot] = v[:, :, 0]
        # the first `filled` slots hold every valid key (slots fill in order before the cache rolls)
        keys, values = k_cache[:, :, :filled], v_cache[:, :, :filled]  # (B, nh, L, hs)
        y = F.scaled_dot_product_attention(q, keys, values)  # (B, nh, 1, hs)
        y = y.transpose(1, 2).reshape(B, 1, C)  # (B, 1, C)
        return self.c_proj(y), v


class MLP(nn.Module):
    def __init__(self, config: BytesGPTConfig):
        super().__init__()
        hidden = config.mlp_ratio * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.relu2 = config.mlp == "relu2"

    def forward(self, x):
        h = self.c_fc(x)  # (B, T, hidden)
        h = F.relu(h).square() if self.relu2 else F.gelu(h)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, config: BytesGPTConfig, first_layer: bool = False):
        super().__init__()
        self.ln_1 = Norm(config.n_embd, config.norm, config.bias)
        self.attn = CausalSelfAttention(config, first_layer)
        self.ln_2 = Norm(config.n_embd, config.norm, config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, window=None, v_first=None):
        y, v = self.attn(self.ln_1(x), cos, sin, window, v_first)
        x = x + y
        return x + self.mlp(self.ln_2(x)), v

    def step(self, x, cos, sin, k_cache, v_cache, slot, filled, v_first=None):
        y, v = self.attn.step(self.ln_1(x), cos, sin, k_cache, v_cache, slot, filled, v_first)
        x = x + y
        return x + self.mlp(self.ln_2(x)), v


class BytesGPT(nn.Module):
    def __init__(self, config: BytesGPTConfig):
        super().__init__()
        if isinstance(config, dict):
            config = BytesGPTConfig(**config)
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, first_layer=i == 0) for i in range(config.n_layer)]),
            ln_f=Norm(config.n_embd, config.norm, config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # scaled init of residual projections (GPT-2)
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if not config.tie_embeddings:  # an untied head starts at zero: every first prediction is uniform
            torch.nn.init.zeros_(self.lm_head.weight)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Parameter count (tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12 L T C (attention)."""
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.block_size * c.n_embd

    @property
    def head_size(self) -> int:
        return self.config.n_embd // self.config.n_head

    # ------------------------------------------------------------------ full-sequence paths

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, start_pos: int = 0):
        """idx (B, T) byte values -> (logits (B, T, 256), loss or None). Loss is mean cross-entropy in nats.

        T may exceed block_size only through ``window_logits``; here every position attends to all earlier
        ones, as in training.
        """
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size={self.config.block_size}; "
                             "use window_logits() or a KVCache for longer inputs")
        x = self.transformer.drop(self.transformer.wte(idx))  # (B, T, C)
        positions = torch.arange(start_pos, start_pos + T, device=idx.device)
        cos, sin = rotary_cos_sin(positions, self.head_size, self.config.rope_base, x.dtype)
        v_first = None
        for block in self.transformer.h:
            x, v = block(x, cos, sin, v_first=v_first)
            v_first = v if v_first is None else v_first
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def window_logits(self, idx: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """Logits for every position of a long sequence idx (B, N) with a sliding window of block_size.

        This is the computation the rolling KV cache does, in parallel: at every layer position t
        attends to positions t-block_size+1 .. t. A layer's key at position j depends on the layer
        below at j-block_size+1 .. j, so the receptive field of the top layer reaches back
        n_layer * (block_size - 1) bytes; each chunk of ``chunk`` queries (default ``WINDOW_CHUNK *
        block_size``) is run with that much history under banded attention (``banded_attention``), which
        makes the result agree with step() within float tolerance. Time and memory are linear in the
        chunk plus its history; the history is recomputed once per chunk.
        """
        B, N = idx.shape
        W = self.config.block_size
        chunk = chunk or WINDOW_CHUNK * W
        history = self.config.n_layer * (W - 1)
        out = []
        for s in range(0, N, chunk):
            e = min(N, s + chunk)
            ctx = max(0, s - history)
            seq = idx[:, ctx:e]  # (B, L) keys: history then the chunk's queries
            L, Q = e - ctx, e - s
            x = self.transformer.wte(seq)  # (B, L, C)
            cos, sin = rotary_cos_sin(torch.arange(ctx, e, device=idx.device), self.head_size, self.config.rope_base, x.dtype)
            v_first = None
            for block in self.transformer.h:
                x, v = block(x, cos, sin, window=W, v_first=v_first)
                v_first = v if v_first is None else v_first
            logits = self.lm_head(self.transformer.ln_f(x[:, L - Q:]))  # (B, Q, V): the chunk's last Q rows
            out.append(logits)
        return torch.cat(out, dim=1) if out else idx.new_zeros((B, 0, self.config.vocab_size), dtype=torch.float32)

    # ------------------------------------------------------------------ incremental path

    def new_cache(self, batch_size: int, device=None, dtype=None) -> KVCache:
        p = self.lm_head.weight
        return KVCache(self.config, batch_size, device=device or p.device, dtype=dtype or p.dtype)

    @torch.no_grad()
    def step(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Feed one byte per stream, idx (B,) at position cache.pos; returns next-byte logits (B, V).

        The identical sequence of step() calls (same B, device, dtype) gives bit-identical logits:
        the compressor's encoder and decoder both run exactly this.
        """
        pos = cache.pos
        slot = pos % cache.block_size
        filled = min(pos + 1, cache.block_size)
        x = self.transformer.wte(idx[:, None])  # (B, 1, C)
        cos, sin = rotary_cos_sin(torch.tensor([pos], device=idx.device), self.head_size, self.config.rope_base, x.dtype)
        v_first = None
        for block, k_cache, v_cache in zip(self.transformer.h, cache.k, cache.v):
            x, v = block.step(x, cos, sin, k_cache, v_cache, slot, filled, v_first)
            v_first = v if v_first is None else v_first
        cache.pos = pos + 1
        return self.lm_head(self.transformer.ln_f(x))[:, 0]  # (B, V)

    @torch.no_grad()
    def prefill(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Feed a prompt idx (B, T) into an empty cache; returns logits for its last position (B, V)."""
        logits = None
        for t in range(idx.shape[1]):
            logits = self.step(idx[:, t], cache)
        return logits

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample max_new_tokens bytes after the prompt idx (B, T) (T >= 1); returns (B, T + max_new_tokens).

        Uses the rolling KV cache: each new byte costs one step, and the context is always the last
        block_size bytes. temperature 0 means greedy decoding.
        """
        if idx.dim() == 1:
            idx = idx[None, :]
        if idx.shape[1] == 0:
            raise ValueError("generate() needs a prompt of at least one byte")
        was_training = self.training
        self.eval()
        prompt = idx[:, -self.config.block_size:].to(self.lm_head.weight.device)
        cache = self.new_cache(idx.shape[0])
        logits = self.prefill(prompt, cache)
        out = [idx.to(prompt.device)]
        for _ in range(max_new_tokens):
            if temperature == 0:
                nxt = logits.argmax(dim=-1)
            else:
                scaled = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(scaled, min(top_k, scaled.size(-1)))
                    scaled = scaled.masked_fill(scaled < v[:, [-1]], float("-inf"))
                probs = F.softmax(scaled, dim=-1)
                nxt = torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]
            out.append(nxt[:, None])
            logits = self.step(nxt, cache)
        self.train(was_training)
        return torch.cat(out, dim=1)


# ----------------------------------------------------------------------------- byte helpers

def encode(data: bytes | bytearray | str) -> torch.Tensor:
    """bytes (or str, encoded as UTF-8) -> LongTensor (T,) of byte values."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not data:
        return torch.zeros(0, dtype=torch.long)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()  # no Python list of ints for large inputs


def decode(ids) -> str:
    """Byte values -> str (UTF-8, invalid sequences replaced; never raises on arbitrary bytes)."""
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    return bytes(int(i) & 0xFF for i in ids).decode("utf-8", errors="replace")
