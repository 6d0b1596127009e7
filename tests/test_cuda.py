"""The CUDA path (run by benchmarks/gpu_check.sh on a GPU machine; skipped without CUDA)."""

import pytest
import torch

from blm_lab.codec.neural import compress, decompress
from blm_lab.errors import CompressionError
from blm_lab.gpt import BytesGPT, BytesGPTConfig
from blm_lab.training.config import TrainConfig
from blm_lab.training.loop import train

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_amp_training_on_cuda_lowers_loss(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(b"the quick brown fox jumps over the lazy dog. " * 400)
    cfg = TrainConfig(dataset=str(corpus), output_dir=str(tmp_path / "out"), batch_size=16, max_steps=60, epochs=0,
                      eval_interval=30, warmup_steps=5, device="cuda", amp=True, progress=False)
    result = train(cfg, BytesGPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=64))
    assert result.history[-1]["val_bpb"] < result.history[0]["val_bpb"]
    assert next(result.model.parameters()).device.type == "cuda"


def test_gpu_compression_round_trip_and_refusal_on_cpu():
    torch.manual_seed(0)
    model = BytesGPT(BytesGPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=64)).cuda().eval()
    data = b"GPU compression round trip. " * 200
    blob = compress(data, model, segments=16)
    assert decompress(blob, model) == data
    with pytest.raises(CompressionError, match="device_type"):
        decompress(blob, model.cpu())
