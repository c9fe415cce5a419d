"""Optimiser parameter groups and the learning-rate schedule, as MAE (``util/lr_sched.py``, ``util/misc.py``)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

# parameters without weight decay besides biases and norm weights (MAE: ``no_weight_decay`` of the model)
NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "decoder_pos_embed")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decay on weight matrices, none on biases, norms (every 1-D parameter), position
    embeddings and tokens. Frozen parameters (fixed sin-cos tables) are left out."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name.split(".")[-1] in NO_DECAY_NAMES:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas, device: torch.device):
    """AdamW over :func:`param_groups`; the fused CUDA implementation on GPU."""
    fused = device.type == "cuda"
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas), fused=fused)


def lr_at(epoch: float, peak_lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """Learning rate at a point of the schedule: linear warm-up from 0, then half-cycle cosine to ``min_lr``.

    MAE ``adjust_learning_rate``. Any unit works as long as all three agree: training calls it in optimiser steps
    (``step``, warm-up steps, schedule steps), which equals MAE's per-step ``epoch = step / steps_per_epoch``.
    """
    if epoch < warmup_epochs:
        return peak_lr * epoch / warmup_epochs
    if epochs <= warmup_epochs:
        return peak_lr
    progress = min(1.0, (epoch - warmup_epochs) / (epochs - warmup_epochs))
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cut_schedule_warning(step: int, total_steps: int, warmup_steps: float, peak_lr: float, min_lr: float):
    """The warning for a run stopped (--max-steps) inside the warm-up of a ``total_steps`` schedule with the lr of
    its last step below a tenth of the peak: low because the schedule was cut, so it trained far less than meant.
    None otherwise (a schedule run to its end, or cut in the cosine, where a low lr is the schedule's own)."""
    lr = lr_at(step - 1, peak_lr, min_lr, warmup_steps, total_steps)
    if step >= total_steps or step - 1 >= warmup_steps or lr >= 0.1 * peak_lr:
        return None
    return (
        f"the run stopped at step {step} of a {total_steps}-step schedule with lr {lr:.3g}, below a tenth of the "
        f"peak {peak_lr:.3g}; for a short run give the schedule its length: --total-steps {step} (warm-up: "
        "--warmup-frac)"
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
