"""Launched by tests/test_ddp.py under torchrun: trains, then every rank saves its final weights for comparison."""

import os
import sys

import torch

from blm_lab.gpt import BytesGPTConfig
from blm_lab.training.config import TrainConfig
from blm_lab.training.distributed import process_group
from blm_lab.training.loop import train

corpus, out_dir, weights_dir, batch_size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
max_steps = int(sys.argv[5]) if len(sys.argv) > 5 else 12
resume = len(sys.argv) > 6 and sys.argv[6] == "resume"
cfg = TrainConfig(dataset=corpus, output_dir=out_dir, batch_size=batch_size, max_steps=max_steps, epochs=0,
                  eval_interval=6, warmup_steps=2, lr=3e-3, min_lr=3e-3, seed=7, cpu=True, progress=False, resume=resume)
model_cfg = BytesGPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=32)
with process_group(cfg.device_preference) as dist_info:
    result = train(cfg, model_cfg, dist_info=dist_info)
rank = int(os.environ.get("RANK", 0))
torch.save({k: v.clone() for k, v in result.model.state_dict().items()}, os.path.join(weights_dir, f"rank{rank}.pt"))
torch.save({"history": result.history, "final_val_bpb": result.final_val_bpb}, os.path.join(weights_dir, f"result{rank}.pt"))
