"""The CUDA path (run by benchmarks/gpu_check.sh on a GPU machine; skipped without CUDA)."""

import pytest
import torch

from blm_lab.codec.neural import compress, decompress
from blm_lab.errors import CompressionError
from blm_lab.gpt import BytesGPT, BytesGPTConfig
from blm_lab.training.config import TrainConfig
from blm_lab.training.loop import train
from conftest import train_briefly

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_amp_training_on_cuda_lowers_loss(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(b"the quick brown fox jumps over the lazy dog. " * 400)
    cfg = TrainConfig(dataset=str(corpus), output_dir=str(tmp_path / "out"), batch_size=16, max_steps=60, epochs=0,
                      eval_interval=30, warmup_steps=5, device="cuda", amp=True, progress=False)
    result = train(cfg, BytesGPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=64))
    assert result.history[-1]["val_bpb"] < result.history[0]["val_bpb"]
    assert next(result.model.parameters()).device.type == "cuda"


def _trained_on(device: str) -> BytesGPT:
    return train_briefly(TEXT, BytesGPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=64), device=device)


TEXT = b"GPU compression round trip: the portable numerics give the CPU's bytes. " * 40


def test_portable_files_from_cuda_and_cpu_are_identical_and_cross_decode():
    gpu = _trained_on("cuda")
    cpu = BytesGPT(gpu.config)
    cpu.load_state_dict({k: v.cpu() for k, v in gpu.state_dict().items()})
    cpu.eval()
    on_gpu, on_cpu = compress(TEXT, gpu, segments=16), compress(TEXT, cpu, segments=16)
    assert on_gpu == on_cpu
    assert decompress(on_gpu, cpu) == TEXT and decompress(on_cpu, gpu) == TEXT


def test_float_files_from_cuda_are_refused_on_cpu():
    gpu = _trained_on("cuda")
    blob = compress(TEXT, gpu, numerics="float", segments=16)
    assert decompress(blob, gpu) == TEXT
    cpu = BytesGPT(gpu.config)
    cpu.load_state_dict({k: v.cpu() for k, v in gpu.state_dict().items()})
    with pytest.raises(CompressionError, match="device: file 'cuda', here 'cpu'"):
        decompress(blob, cpu.eval())
