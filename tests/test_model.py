"""BytesGPT: shapes, causality, the rolling KV cache against the parallel paths, generation, byte helpers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from blm_lab.gpt import BytesGPT, BytesGPTConfig, decode, encode


@pytest.fixture
def model(tiny_config) -> BytesGPT:
    torch.manual_seed(0)
    return BytesGPT(tiny_config).eval()


def random_bytes(*shape, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g)


def step_logits(model: BytesGPT, idx: torch.Tensor) -> torch.Tensor:
    """Logits (B, N, V) for every position of idx (B, N), fed one byte at a time through the KV cache."""
    cache = model.new_cache(idx.shape[0])
    return torch.stack([model.step(idx[:, t], cache) for t in range(idx.shape[1])], dim=1)


# ----------------------------------------------------------------------------- forward


def test_forward_shapes_and_loss(model, tiny_config):
    idx = random_bytes(3, tiny_config.block_size)
    targets = random_bytes(3, tiny_config.block_size, seed=1)
    logits, loss = model(idx, targets)
    assert logits.shape == (3, tiny_config.block_size, 256)
    assert loss.shape == ()
    expected = F.cross_entropy(logits.reshape(-1, 256), targets.reshape(-1))
    torch.testing.assert_close(loss, expected)
    # a freshly initialised model predicts nearly uniform bytes: about ln 256 nats
    assert abs(loss.item() - math.log(256)) < 0.1

    logits_only, no_loss = model(idx[:, :5])
    assert logits_only.shape == (3, 5, 256) and no_loss is None


def test_forward_rejects_sequences_longer_than_block_size(model, tiny_config):
    with pytest.raises(ValueError, match="block_size"):
        model(random_bytes(1, tiny_config.block_size + 1))


def test_changing_a_later_byte_never_changes_earlier_logits(model, tiny_config):
    T = tiny_config.block_size
    idx = random_bytes(1, T)
    base, _ = model(idx)
    for t in range(T - 1):
        changed = idx.clone()
        changed[0, t + 1] = (changed[0, t + 1] + 97) % 256
        logits, _ = model(changed)
        torch.testing.assert_close(logits[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
        # and the changed position itself does see the change, so this check can fail
        assert not torch.allclose(logits[:, t + 1], base[:, t + 1], atol=1e-4)


# ----------------------------------------------------------------------------- KV cache vs parallel paths


def test_step_matches_forward_within_block(model, tiny_config):
    idx = random_bytes(2, tiny_config.block_size)
    full, _ = model(idx)
    torch.testing.assert_close(step_logits(model, idx), full, rtol=0, atol=1e-5)


def test_step_matches_window_logits_past_block_size(model, tiny_config):
    W = tiny_config.block_size
    idx = random_bytes(2, 3 * W, seed=3)
    stepped = step_logits(model, idx)
    assert stepped.shape == (2, 3 * W, 256)
    windowed = model.window_logits(idx)
    torch.testing.assert_close(stepped, windowed, rtol=0, atol=1e-5)
    # the first block_size positions have the whole prefix as context: plain forward agrees too
    full, _ = model(idx[:, :W])
    torch.testing.assert_close(stepped[:, :W], full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 5, 16, 23])
def test_window_logits_small_chunks_agree_with_step(model, tiny_config, chunk):
    W = tiny_config.block_size
    idx = random_bytes(1, 3 * W + 7, seed=4)
    stepped = step_logits(model, idx)
    windowed = model.window_logits(idx, chunk=chunk)
    assert windowed.shape == stepped.shape
    torch.testing.assert_close(windowed, stepped, rtol=0, atol=1e-5)


def test_rolling_cache_sees_exactly_block_size_bytes():
    """With one layer the receptive field is block_size bytes: step() at t equals forward() on bytes t-W+1..t."""
    torch.manual_seed(1)
    config = BytesGPTConfig(block_size=8, n_layer=1, n_head=2, n_embd=32)
    model = BytesGPT(config).eval()
    W = config.block_size
    idx = random_bytes(1, 4 * W, seed=5)
    stepped = step_logits(model, idx)
    for t in range(W - 1, 4 * W):
        window_logits, _ = model(idx[:, t - W + 1: t + 1])
        torch.testing.assert_close(stepped[:, t], window_logits[:, -1], rtol=0, atol=1e-5)
    # a byte that has left the window no longer matters
    changed = idx.clone()
    changed[0, 0] = (changed[0, 0] + 1) % 256
    torch.testing.assert_close(step_logits(model, changed)[:, W:], stepped[:, W:], rtol=0, atol=1e-5)


def test_identical_step_sequences_are_bit_identical(model, tiny_config):
    idx = random_bytes(2, 2 * tiny_config.block_size + 3, seed=6)
    first = step_logits(model, idx)
    second = step_logits(model, idx)
    assert torch.equal(first, second)


# ----------------------------------------------------------------------------- generation


def test_generate_shape_and_prompt_preserved(model):
    prompt = random_bytes(2, 5, seed=7)
    out = model.generate(prompt, max_new_tokens=11, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 16)
    assert torch.equal(out[:, :5], prompt)
    assert out.dtype == torch.long and int(out.min()) >= 0 and int(out.max()) < 256


def test_generate_prompt_longer_than_block_size_is_preserved(model, tiny_config):
    prompt = random_bytes(1, 2 * tiny_config.block_size + 1, seed=8)
    out = model.generate(prompt, max_new_tokens=4, temperature=0)
    assert out.shape == (1, prompt.shape[1] + 4)
    assert torch.equal(out[:, : prompt.shape[1]], prompt)


def test_generate_temperature_zero_is_greedy_and_deterministic(model, tiny_config):
    prompt = random_bytes(2, 4, seed=9)
    n_new = 2 * tiny_config.block_size  # runs past the cache length, so the rolling path is exercised
    out = model.generate(prompt, max_new_tokens=n_new, temperature=0)
    assert torch.equal(out, model.generate(prompt, max_new_tokens=n_new, temperature=0))
    # each new byte is the argmax of the logits for the sequence so far (sliding-window reference)
    logits = model.window_logits(out[:, :-1])
    expected = logits[:, prompt.shape[1] - 1:].argmax(dim=-1)
    assert torch.equal(out[:, prompt.shape[1]:], expected)


def test_generate_top_k_restricts_samples(model):
    prompt = random_bytes(1, 6, seed=10).repeat(128, 1)
    last_logits = model.window_logits(prompt[:1])[0, -1]
    allowed = set(torch.topk(last_logits, 3).indices.tolist())

    out = model.generate(prompt, max_new_tokens=1, temperature=1.0, top_k=3, generator=torch.Generator().manual_seed(0))
    assert set(out[:, -1].tolist()) <= allowed
    # without top_k the nearly uniform untrained model samples far outside the top 3
    free = model.generate(prompt, max_new_tokens=1, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert not set(free[:, -1].tolist()) <= allowed
    # top_k=1 is greedy
    assert torch.equal(model.generate(prompt[:2], max_new_tokens=8, top_k=1),
                       model.generate(prompt[:2], max_new_tokens=8, temperature=0))


def test_generate_seeded_generator_is_reproducible_and_restores_mode(model):
    prompt = random_bytes(1, 3, seed=11)
    model.train()
    a = model.generate(prompt, max_new_tokens=20, generator=torch.Generator().manual_seed(42))
    assert model.training
    b = model.generate(prompt, max_new_tokens=20, generator=torch.Generator().manual_seed(42))
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- byte helpers


@pytest.mark.parametrize("text", ["", "hello", "Grüße, 世界 🌍\n\t\x00"])
def test_encode_decode_round_trip(text):
    ids = encode(text)
    assert ids.dtype == torch.long
    assert ids.tolist() == list(text.encode("utf-8"))
    assert decode(ids) == text
    assert decode(ids.tolist()) == text


def test_encode_bytes_covers_all_values():
    data = bytes(range(256))
    assert encode(data).tolist() == list(range(256))
    assert encode(bytearray(data)).tolist() == list(range(256))


@pytest.mark.parametrize("ids", [list(range(256)), list(range(255, -1, -1)), [0xFF, 0xFE, 0xC3], [0xC3], [0xE2, 0x82],
                                 [0xED, 0xA0, 0x80], [0x80] * 5])
def test_decode_never_raises_on_arbitrary_bytes(ids):
    text = decode(ids)
    assert isinstance(text, str)
    assert text == bytes(ids).decode("utf-8", errors="replace")
    assert decode(torch.tensor(ids)) == text


def test_decode_replaces_invalid_utf8():
    assert decode([66, 0xFF, 77]) == "B\ufffdM"


# ----------------------------------------------------------------------------- weights and config


def test_weight_tying(model, tiny_config):
    assert model.transformer.wte.weight is model.lm_head.weight
    # the tied matrix is counted once: the state dict lists it under both names
    untied = sum(p.numel() for p in model.state_dict().values())
    assert model.num_params() == untied - 256 * tiny_config.n_embd
    # tying survives a state-dict round trip
    clone = BytesGPT(tiny_config)
    clone.load_state_dict(model.state_dict())
    assert clone.transformer.wte.weight is clone.lm_head.weight
    with torch.no_grad():
        clone.lm_head.weight[65].fill_(0.5)
    assert torch.all(clone.transformer.wte.weight[65] == 0.5)


def test_config_rejects_n_embd_not_divisible_by_n_head():
    with pytest.raises(ValueError, match="not divisible"):
        BytesGPTConfig(n_embd=30, n_head=4)


def test_config_rejects_odd_head_size_and_empty_block():
    with pytest.raises(ValueError, match="even"):
        BytesGPTConfig(n_embd=6, n_head=2)
    with pytest.raises(ValueError, match="block_size"):
        BytesGPTConfig(block_size=0)


def test_model_accepts_config_dict(tiny_config):
    model = BytesGPT(tiny_config.to_dict())
    assert model.config == tiny_config
