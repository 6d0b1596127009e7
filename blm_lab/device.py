"""The one device picker, and a description of what was found."""

from __future__ import annotations

import os

import torch

from .errors import ConfigError


def pick_device(preference: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cpu' / 'cuda' / 'cuda:N' are taken as given.

    Under torchrun (LOCAL_RANK set) 'auto' and 'cuda' mean this process's own GPU.
    """
    preference = (preference or "auto").lower()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for but no CUDA device is available; use device='cpu' or 'auto'")
        if preference == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(preference)


def describe_device(device: torch.device) -> dict:
    """What a run is on: GPU name and memory, or CPU threads; printed by the training notebook."""
    info = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    gpu_count=torch.cuda.device_count(), bf16=torch.cuda.is_bf16_supported())
    else:
        info.update(cpu_threads=torch.get_num_threads(), cpu_count=os.cpu_count())
    return info


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """Mixed precision is for CUDA only: bf16 where supported, else fp16. On CPU bf16 matmul is ~100x slower."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# dense bf16 peak TFLOP/s of common accelerators, for model FLOPs utilisation (MFU)
PEAK_TFLOPS_BF16 = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0,
                    "RTX 4090": 165.0, "V100": 125.0, "T4": 65.0}


def peak_tflops(gpu_name: str) -> float:
    """Dense bf16 peak of a GPU by name (0 when unknown)."""
    for key, value in PEAK_TFLOPS_BF16.items():
        if key.lower() in gpu_name.lower():
            return value
    return 0.0
