"""Every architecture option of BytesGPTConfig, alone and together: shapes, causal masking, the KV cache
against the full pass, and checkpoint round trips. Plus the optimizer and schedule options of training."""

from __future__ import annotations

import math

import pytest
import torch

from blm_lab.checkpoint import load_checkpoint, save_checkpoint
from blm_lab.errors import ConfigError
from blm_lab.gpt import BytesGPT, BytesGPTConfig
from blm_lab.training.config import TrainConfig
from blm_lab.training.loop import train
from blm_lab.training.optim import Muon, lr_scale, make_optimizers, orthogonalize
from conftest import ARCHITECTURE_OPTIONS

OPTIONS = ARCHITECTURE_OPTIONS  # each option alone, and all together


def perturbed_model(options: dict, seed: int = 0) -> BytesGPT:
    """A small model with every parameter moved off its initial value (zero-initialised heads and unit gains
    would hide mistakes)."""
    torch.manual_seed(seed)
    model = BytesGPT(BytesGPTConfig(block_size=8, n_layer=3, n_head=2, n_embd=16, **options)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", OPTIONS)
def test_shapes_and_loss(name):
    model = perturbed_model(OPTIONS[name])
    x = torch.randint(0, 256, (3, 8))
    logits, loss = model(x, x)
    assert logits.shape == (3, 8, 256) and loss.shape == () and math.isfinite(loss.item())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", OPTIONS)
def test_causal_masking(name):
    model = perturbed_model(OPTIONS[name])
    x = torch.randint(0, 256, (1, 8))
    changed = x.clone()
    changed[0, 5] = (changed[0, 5] + 1) % 256
    a, b = model(x)[0], model(changed)[0]
    assert torch.equal(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize("name", OPTIONS)
def test_kv_cache_equals_the_full_pass(name):
    """Within the block and past it (the cache rolls): step() == window_logits() == forward()."""
    model = perturbed_model(OPTIONS[name])
    x = torch.randint(0, 256, (2, 21))
    full = model.window_logits(x)
    cache = model.new_cache(2)
    steps = torch.stack([model.step(x[:, t], cache) for t in range(x.shape[1])], dim=1)
    torch.testing.assert_close(steps, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(x[:, :8])[0], full[:, :8], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", OPTIONS)
def test_checkpoint_round_trip(name, tmp_path):
    model = perturbed_model(OPTIONS[name])
    path = save_checkpoint(tmp_path / f"{name}.pt", {"config": model.config.to_dict(), "model_state": model.state_dict()})
    loaded, _ = load_checkpoint(path)
    assert loaded.config == model.config
    x = torch.randint(0, 256, (2, 8))
    assert torch.equal(loaded(x)[0], model(x)[0])


def test_untied_head_is_separate_and_starts_uniform():
    torch.manual_seed(0)
    model = BytesGPT(BytesGPTConfig(block_size=8, n_layer=1, n_head=2, n_embd=16, tie_embeddings=False))
    assert model.lm_head.weight is not model.transformer.wte.weight
    logits, _ = model(torch.randint(0, 256, (1, 8)))
    assert torch.equal(logits, torch.zeros_like(logits))  # a zero head: 8 bits for every first prediction


def test_option_values_are_checked():
    with pytest.raises(ConfigError, match="mlp='swiglu'"):
        BytesGPTConfig(mlp="swiglu")
    with pytest.raises(ConfigError, match="norm='batchnorm'"):
        BytesGPTConfig(norm="batchnorm")


# ----------------------------------------------------------------------------- optimizer and schedule

def test_orthogonalize_pushes_singular_values_towards_one():
    torch.manual_seed(0)
    for shape in ((48, 16), (16, 48)):
        g = torch.randn(shape) * torch.logspace(-1, 0.5, shape[1])  # columns scaled: ill-conditioned
        assert torch.linalg.cond(g) > 10
        s = torch.linalg.svdvals(orthogonalize(g))
        assert s.min() > 0.5 and s.max() < 1.3, s


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = BytesGPT(BytesGPTConfig(block_size=8, n_layer=2, n_head=2, n_embd=16, tie_embeddings=False))
    cfg = TrainConfig(optimizer="muon", max_steps=1)
    adamw, muon = make_optimizers(model, cfg, torch.device("cpu"))
    assert isinstance(muon, Muon)
    in_muon = {id(p) for group in muon.param_groups for p in group["params"]}
    in_adamw = {id(p) for group in adamw.param_groups for p in group["params"]}
    assert not in_muon & in_adamw and in_muon | in_adamw == {id(p) for p in model.parameters()}
    assert id(model.lm_head.weight) in in_adamw and id(model.transformer.wte.weight) in in_adamw
    assert id(model.transformer.h[0].attn.c_attn.weight) in in_muon
    assert [len(opt.param_groups) for opt in (adamw, muon)] == [2, 1]


def test_wsd_schedule_is_flat_then_linear():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, schedule="wsd", decay_fraction=0.25, max_steps=100)
    assert lr_scale(cfg, 0, 0.0) == pytest.approx(0.1)
    assert [lr_scale(cfg, 50, p) for p in (0.0, 0.5, 0.75)] == [1.0, 1.0, 1.0]
    assert lr_scale(cfg, 50, 0.875) == pytest.approx(0.55)
    assert lr_scale(cfg, 50, 1.0) == pytest.approx(0.1) and lr_scale(cfg, 50, 2.0) == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="--schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(ConfigError, match="--optimizer"):
        TrainConfig(optimizer="sgd")


def test_muon_run_resumes_to_the_straight_run(make_train_config):
    model_cfg = BytesGPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32, **OPTIONS["all"])
    options = dict(optimizer="muon", schedule="wsd", eval_interval=3, warmup_steps=2)
    straight = train(make_train_config(max_steps=6, **options, output_dir=make_train_config().output_dir + "_a"),
                     model_cfg)
    train(make_train_config(max_steps=3, **options), model_cfg)
    resumed = train(make_train_config(max_steps=6, resume=True, **options), model_cfg)
    for name, tensor in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, rtol=1e-5, atol=1e-6)
    assert resumed.final_val_bpb == pytest.approx(straight.final_val_bpb, abs=1e-5)
