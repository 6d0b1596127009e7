"""Optimizers and the learning-rate schedule.

``make_optimizers`` returns the optimizers of a run: AdamW alone, or Muon for the transformer blocks'
weight matrices with AdamW for everything else (embeddings, head, gains, mixing weights), as in
modded-nanoGPT. ``lr_scale`` is the schedule, a factor applied to every group's base learning rate.

``Muon`` is Keller Jordan's optimizer: SGD momentum (Nesterov), with each 2-D update replaced by the
nearest semi-orthogonal matrix, found by five quintic Newton-Schulz iterations. ``torch.optim.Muon``
(torch 2.13) runs that iteration in bfloat16, which on these CPUs is about 100 times slower than
float32 (1 against 120 GFLOP/s): here it runs in float32 on CPU and in bfloat16 on CUDA.
"""

from __future__ import annotations

import math

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic, steepest at zero


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately U V^T for g = U S V^T (singular values pushed into about [0.7, 1.2]), g: (m, n)."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T  # (n, m): the Gram matrix below is the small one
    x = x / (x.norm() + eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if transposed else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters: momentum, then an orthogonalised update scaled by sqrt(max(1, rows/cols))."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 5):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                      ns_steps=ns_steps))
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D parameters only, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                update = orthogonalize(update, group["ns_steps"]) * math.sqrt(max(1.0, p.size(0) / p.size(1)))
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"])


def make_optimizers(model: torch.nn.Module, cfg, device: torch.device) -> list[torch.optim.Optimizer]:
    """The run's optimizers, each param group with ``base_lr`` set (``lr_scale`` multiplies it).

    AdamW decays matrices (weight_decay) and not gains or biases. With ``cfg.optimizer == "muon"`` the
    blocks' weight matrices go to Muon (lr ``muon_lr``, the same weight decay) and AdamW keeps the rest.
    """
    blocks = getattr(getattr(model, "transformer", None), "h", None)
    in_blocks = {id(p) for p in blocks.parameters()} if blocks is not None else set()
    muon, decay, no_decay = [], [], []
    for p in model.parameters():
        if cfg.optimizer == "muon" and p.dim() == 2 and id(p) in in_blocks:
            muon.append(p)
        elif p.dim() >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    adamw = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")
    optimizers: list[torch.optim.Optimizer] = [adamw]
    if muon:
        optimizers.append(Muon(muon, lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=cfg.weight_decay))
    for opt in optimizers:
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    return optimizers


def lr_scale(cfg, step: int, progress: float) -> float:
    """The schedule as a factor of each group's base learning rate.

    Linear warmup over ``warmup_steps``; then, as ``progress`` goes 0 -> 1 (steps or time, whichever
    bounds the run), ``cosine`` from 1 to min_lr/lr, or ``wsd``: flat at 1, then linear to min_lr/lr over
    the last ``decay_fraction`` of the run.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    floor = cfg.min_lr / cfg.lr
    progress = min(max(progress, 0.0), 1.0)
    if cfg.schedule == "wsd":
        decay_start = 1.0 - cfg.decay_fraction
        if progress <= decay_start:
            return 1.0
        return 1.0 - (1.0 - floor) * (progress - decay_start) / cfg.decay_fraction
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - floor)
