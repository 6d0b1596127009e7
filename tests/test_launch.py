"""The training notebook's multi-GPU launch: process count and the torchrun command line."""

import dataclasses

from blm_lab.gpt import BytesGPTConfig
from blm_lab.train_bytes import build_parser
from blm_lab.training.config import TrainConfig, configs_from_args
from blm_lab.training.launch import torchrun_command, training_processes


def test_cpu_falls_back_to_one_process():
    assert training_processes(8, "cpu") == 1
    assert training_processes(0, "cpu") == 1


def test_torchrun_command_reproduces_both_configs():
    train_cfg = TrainConfig(dataset="corpus.txt", output_dir="out/ckpt", batch_size=48, grad_accum=2, lr=1.5e-3,
                            time_budget=90.0, amp=True, save_best=True, eval_interval=50)
    model_cfg = BytesGPTConfig(block_size=64, n_layer=3, n_head=2, n_embd=96, dropout=0.1, bias=True)
    cmd = torchrun_command(train_cfg, model_cfg, nproc=4)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    i = cmd.index("blm_lab.train_bytes")
    args = build_parser().parse_args(cmd[i + 1:])
    got_train, got_model = configs_from_args(args)
    assert got_model == model_cfg
    expected = dataclasses.replace(train_cfg, device="cuda", progress=False)
    assert got_train == expected
