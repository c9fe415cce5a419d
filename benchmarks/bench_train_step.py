"""SiamMAE training step with the fused masked-patch gather versus MAE's embed-all-then-gather.

With 95 % of f2 masked (docs/PAPER.md), MAE's recipe embeds all L patches of f2 and keeps K of them. Three paths for
the patch embedding of a masked frame:

    embed-all     timm / MAE: Conv2d over all L patches, + pos_embed, gather K tokens (B, L, D) -> (B, K, D)
    gather-torch  patch_embed_gather(backend="torch"): gather the K pixel patches, one matmul (the CPU path)
    fused-triton  patch_embed_gather(backend="triton"): one Triton pass, pixels -> tokens (CUDA only)

Two measurements per path: the patch embedding of f2 alone (forward + backward for weight and bias, the
SiamMAE case: frozen pixels, fixed sin-cos table), and a full training step of the model (masking, forward of
both frames, loss, backward, AdamW step). Every path starts from the same weights, frames and masks, and the
first loss of each is recorded to show they compute the same thing.

    python benchmarks/bench_train_step.py                        # CUDA when present (batch 64, bf16 autocast)
    python benchmarks/bench_train_step.py --device cpu --batch 2 # CPU (fp32)

Results go to benchmarks/results/bench_train_step-<device>.{json,md} with the machine, versions and commit.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._meta import RESULTS, environment, environment_markdown, write_results  # noqa: E402
from siammae.kernels.dispatch import triton_available, triton_interpreted  # noqa: E402
from siammae.kernels.patch_embed_gather import patch_embed_gather  # noqa: E402
from siammae.model.masking import num_kept, random_masking  # noqa: E402
from siammae.model.registry import create_model  # noqa: E402

PATHS = ("embed-all", "gather-torch", "fused-triton")


# ------------------------------------------------------------------------------------------------ the paths
def embed_masked(x, ids_keep, weight, bias, pos, path: str) -> torch.Tensor:
    """Tokens (B, K, D) of the kept patches of x (B, C, H, W) by ``path``; pos is (L, D)."""
    if path == "embed-all":
        p = weight.shape[-1]
        tokens = torch.nn.functional.conv2d(x, weight, bias, stride=p).flatten(2).transpose(1, 2) + pos  # (B, L, D)
        return torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, tokens.shape[-1]))  # (B, K, D)
    return patch_embed_gather(x, ids_keep, weight, bias, pos, backend=path.split("-")[1])


def use_path(encoder, path: str) -> None:
    """Make ``encoder`` embed masked frames by ``path``; unmasked frames (f1) always take the Conv2d."""
    if not hasattr(encoder, "embed_patches"):
        raise SystemExit("error: the encoder has no embed_patches(x, ids_keep, pos_interp); update this benchmark")

    def embed_patches(self, x, ids_keep=None, pos_interp="auto"):
        h, w = self.grid(x)
        pos = self.pos_embed_for(h, w, pos_interp)[0, 1:]  # (L, D)
        if ids_keep is None:
            return self.patch_embed(x) + pos  # (B, L, D)
        proj = self.patch_embed.proj
        return embed_masked(x, ids_keep, proj.weight, proj.bias, pos, path)  # (B, K, D)

    encoder.embed_patches = types.MethodType(embed_patches, encoder)


# ------------------------------------------------------------------------------------------------------ timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_in_turn(fns: dict, steps: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """Wall time (s) of each call of every function, the functions run in turn (A B C A B C ...) so that load
    from other processes and clock changes hit every path alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def step_memory_mib(fn, device: torch.device) -> float | None:
    """Peak memory one call of ``fn`` allocates above what is resident before it (activations, workspaces)."""
    if device.type != "cuda":
        return None
    sync(device)
    resident = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - resident) / 2**20


def frames(cfg, batch: int, device: torch.device, n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, device=device, generator=g) for _ in range(n)]


def op_step(model, path, batch, device, amp_dtype):
    """Patch embedding of a masked f2 alone: forward + backward for the projection weight and bias (frozen
    pixels, fixed sin-cos table: the SiamMAE case)."""
    cfg = model.config
    (x,) = frames(cfg, batch, device, 1)
    g = torch.Generator(device=device).manual_seed(0)
    ids_keep, _, _ = random_masking(batch, cfg.grid_size**2, cfg.mask_ratio_f2, device=device, generator=g)
    proj = copy.deepcopy(model.encoder.patch_embed.proj)
    pos = model.encoder.pos_embed[0, 1:].detach()  # (L, D)

    def step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = embed_masked(x, ids_keep, proj.weight, proj.bias, pos, path)  # (B, K, D)
        out.float().square().mean().backward()

    return step


def train_step(model, path, batch, device, amp_dtype):
    """One SiamMAE optimisation step (MAE's AdamW settings, docs/PAPER.md Table 4a) on a fixed frame-pair batch.
    Returns the step and the list its losses go to; call k of every path draws the same masks."""
    model = copy.deepcopy(model)
    use_path(model.encoder, path)
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    f1, f2 = frames(model.config, batch, device, 2)
    mask_gen = torch.Generator(device=device)
    losses = []

    def step():
        mask_gen.manual_seed(len(losses))
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = model(f1, f2, generator=mask_gen)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    return step, losses


# ------------------------------------------------------------------------------------------------------ report
def markdown(meta: dict, cfg: dict, K: int, rows: list[dict]) -> str:
    """The results table; ``cfg`` is the run's config record, K the kept patches of f2."""
    lines = [
        f"# bench_train_step: {cfg['model']} on {cfg['device']}",
        "",
        f"batch {cfg['batch']}, {cfg['img_size']}x{cfg['img_size']}, f2 mask ratio {cfg['mask_ratio_f2']} "
        f"(K = {K} of L = {cfg['num_patches']} patches), precision {cfg['precision']}, "
        f"median of {cfg['steps']} training steps ({cfg['op_steps']} for the op alone) after {cfg['warmup']} "
        "warm-up, the paths run in turn. Step memory: peak allocated during one step above the resident "
        "weights and optimiser state.",
        "",
        environment_markdown(meta),
        "",
        "| path | f2 patch embed fwd+bwd (ms) | vs embed-all | train step, median (min-max) ms | samples/s "
        "| vs embed-all "
        "| step memory (MiB) | first loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = next(r for r in rows if r["path"] == "embed-all")
    for r in rows:
        mem = r["train"]["step_mem_mib"]
        mem = "-" if mem is None else f"{mem:.0f}"
        lines.append(
            f"| {r['path']} | {r['op']['ms']:.3f} | {base['op']['ms'] / r['op']['ms']:.2f}x | {r['train']['ms']:.1f} "
            f"({min(r['train']['ms_all']):.1f}-{max(r['train']['ms_all']):.1f}) "
            f"| {r['train']['samples_per_s']:.2f} | {base['train']['ms'] / r['train']['ms']:.3f}x | {mem} "
            f"| {r['train']['first_loss']:.6f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vits16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, help="default 64 on CUDA, 2 on CPU")
    ap.add_argument("--steps", type=int, help="timed steps (default 20 on CUDA, 3 on CPU)")
    ap.add_argument("--warmup", type=int, help="untimed steps first (default 5 on CUDA, 2 on CPU)")
    ap.add_argument("--op-steps", type=int, help="timed steps of the op alone (default 100 on CUDA, 10 on CPU)")
    ap.add_argument("--precision", choices=("bf16", "fp32"), help="autocast bf16 (CUDA default) or fp32")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if triton_interpreted():
        raise SystemExit("error: unset TRITON_INTERPRET; interpreter timings mean nothing")
    batch = args.batch or (64 if cuda else 2)
    steps, warmup = args.steps or (20 if cuda else 3), args.warmup or (5 if cuda else 2)
    op_steps = args.op_steps or (100 if cuda else 10)
    precision = args.precision or ("bf16" if cuda else "fp32")
    amp_dtype = torch.bfloat16 if precision == "bf16" else None
    paths = [p for p in PATHS if p != "fused-triton" or (cuda and triton_available())]

    torch.manual_seed(0)
    model = create_model(args.model).to(device)
    cfg = model.config
    ops = {path: op_step(model, path, batch, device, amp_dtype) for path in paths}
    op_times = timed_in_turn(ops, op_steps, warmup, device)
    trains = {path: train_step(model, path, batch, device, amp_dtype) for path in paths}
    train_times = timed_in_turn({p: fn for p, (fn, _) in trains.items()}, steps, warmup, device)
    rows = []
    for path in paths:
        step, losses = trains[path]
        op_ms, ms = 1e3 * statistics.median(op_times[path]), 1e3 * statistics.median(train_times[path])
        rows.append(
            {
                "path": path,
                "op": {"ms": op_ms, "ms_all": [1e3 * t for t in op_times[path]]},
                "train": {
                    "ms": ms,
                    "ms_all": [1e3 * t for t in train_times[path]],
                    "samples_per_s": batch / (ms / 1e3),
                    "first_loss": losses[0].item(),
                    "step_mem_mib": step_memory_mib(step, device),
                },
            }
        )
        print(
            f"{path:>13}: f2 patch embed {op_ms:8.3f} ms | train step {ms:8.1f} ms "
            f"({batch / (ms / 1e3):.2f} samples/s) | first loss {losses[0].item():.6f}",
            file=sys.stderr,
        )

    config = {
        "model": args.model,
        "device": device.type,
        "batch": batch,
        "img_size": cfg.img_size,
        "patch_size": cfg.patch_size,
        "num_patches": cfg.grid_size**2,
        "mask_ratio_f2": cfg.mask_ratio_f2,
        "precision": precision,
        "steps": steps,
        "warmup": warmup,
        "op_steps": op_steps,
    }
    K = num_kept(cfg.grid_size**2, cfg.mask_ratio_f2)
    meta = environment()
    table = markdown(meta, config, K, rows)
    write_results(f"bench_train_step-{device.type}", meta, rows, table, folder=args.out, config=config, K=K)
    print(table)


if __name__ == "__main__":
    main()
