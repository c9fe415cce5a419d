"""Stages 1a and 1b: the ``gpu``-marked tests, and both Triton kernels against their PyTorch references at the real
sizes, with an fp64 oracle and a run-to-run determinism check.

- top-k affinity: the DAVIS grids of ViT-S/16 and ViT-S/8 (30x55, 60x110), D 384, in two configurations: the
  ``siammae-davis`` one (k 7, n 20, circle radius 20, reference frame unrestricted) and the ``dino`` preset
  (k 5, n 7, square radius 12, every frame restricted); fp32 / fp16 / bf16 features. The kernel returns the k
  weights and flat key indices per query; compared are the propagated labels (weights x gathered labels, the
  op's ``labels=`` output), which do not depend on how ties between equal scores are broken.
- fused masked-patch gather: ViT-S/16 and ViT-S/8 training shapes (224 crops, 95 % of f2 masked, batch 64),
  forward and the gradients of the image, weight, bias and position table, fp32 and bf16 autocast.

Error: max abs difference of the kernel and of the PyTorch reference (same dtype) from an fp64 oracle, and of the
kernel from the reference. Determinism: the kernel run twice on the same inputs, bit for bit.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def gpu_tests(st) -> None:
    """``pytest -m gpu`` over the test files that hold gpu-marked tests; counts of passed / failed / skipped."""
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py") if "mark.gpu" in p.read_text())
    if not files:
        st.skip("pytest -m gpu", "no test file has a gpu-marked test")
        return
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider", *files]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(st.left() - 5, 5))
    except subprocess.TimeoutExpired:
        st.skip("pytest -m gpu", "out of time: the tests did not finish within the stage's budget")
        return
    tail = proc.stdout.strip().splitlines()[-30:]
    summary = tail[-1] if tail else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|error|errors)", summary)}
    st.add({"check": "pytest -m gpu", "files": files, "returncode": proc.returncode, "summary": summary,
            **counts, "output_tail": tail if proc.returncode not in (0, 5) else tail[-8:]})  # fmt: skip


# ------------------------------------------------------------------------------------------------ top-k affinity
TOPK_CASES = ("siammae-davis", "dino")  # presets whose constants (siammae.propagation.get_preset) the kernel runs


def topk_case(grid, dim, dtype, case, seed=0, device="cuda", quick=False):
    """Random L2-normalised bank and queries in ``dtype``, soft labels; -> (query, keys, labels fp32, kwargs).
    ``quick``: 2 short-term frames and radius 2 (the Triton interpreter runs every program in Python)."""
    from siammae.propagation import get_preset

    p = get_preset(case).propagation
    topk, n_last, radius, temperature = p.topk, p.n_last, p.radius, p.temperature
    neighbourhood, restrict_ref = p.neighbourhood, p.restrict_reference
    if quick:
        topk, n_last, radius = min(topk, 3), 2, 2
    h, w = grid
    N, F, T, C = h * w, 1 + n_last, 2, 4
    g = torch.Generator(device=device).manual_seed(seed)
    keys = torch.nn.functional.normalize(torch.randn(F, N, dim, device=device, generator=g), dim=-1)
    query = torch.nn.functional.normalize(torch.randn(T, N, dim, device=device, generator=g), dim=-1)
    labels = torch.softmax(torch.randn(F, N, C, device=device, generator=g), -1)
    kw = dict(grid=grid, ctx_start=[1] * T, ctx_stop=[F] * T, n_ref=1, topk=topk, temperature=temperature,
              radius=radius, neighbourhood=neighbourhood, restrict_ref=restrict_ref)  # fmt: skip
    return query.to(dtype), keys.to(dtype), labels, kw


def topk_kernel(st) -> None:
    from siammae.kernels.topk_affinity import topk_affinity, topk_affinity_cpu

    sh = st.shapes
    for grid in sh.topk_grids:
        for case in TOPK_CASES:
            for dtype_name in sh.topk_dtypes:
                what = f"top-k affinity {grid[0]}x{grid[1]} {case} {dtype_name}"
                if not st.fits(what, 3 if not sh.quick else 5):
                    continue
                with st.case(what):
                    dtype = getattr(torch, dtype_name)
                    q, k, labels, kw = topk_case(grid, sh.topk_dim, dtype, case, device=sh.device, quick=sh.quick)
                    oracle = topk_affinity_cpu(q.double(), k.double(), labels=labels.double(), **kw)  # (T, N, C)
                    ref = topk_affinity_cpu(q, k, labels=labels, **kw)
                    out = topk_affinity(q, k, labels=labels, backend="triton", **kw)
                    again = topk_affinity(q, k, labels=labels, backend="triton", **kw)
                    w, idx = topk_affinity(q, k, backend="triton", **kw)
                    w_ref, idx_ref = topk_affinity_cpu(q, k, **kw)
                    st.add({
                        "check": "topk_affinity", "grid": f"{grid[0]}x{grid[1]}", "case": case, "dtype": dtype_name,
                        "D": sh.topk_dim, "max_err_vs_ref": _err(out, ref), "max_err_vs_fp64": _err(out, oracle),
                        "ref_max_err_vs_fp64": _err(ref, oracle),
                        "index_agreement": float((idx == idx_ref).float().mean()),
                        "weight_max_err_vs_ref": _err(w, w_ref), "deterministic": bool(torch.equal(out, again)),
                        "ok": _err(out, oracle) <= 2 * _err(ref, oracle) + _atol(dtype),
                    })  # fmt: skip


# ---------------------------------------------------------------------------------------------- fused gather
def gather_kernel(st) -> None:
    from siammae.kernels.patch_embed_gather import patch_embed_gather, patch_embed_gather_ref
    from siammae.model.masking import num_kept, random_masking
    from siammae.model.registry import create_model

    sh = st.shapes
    dev = torch.device(sh.device)
    for name in sh.gather_models:
        cfg = create_model(name).config
        p, S, B = cfg.patch_size, cfg.img_size, sh.gather_batch
        L = (S // p) ** 2
        K = num_kept(L, cfg.mask_ratio_f2)
        for amp in (None, torch.bfloat16):
            what = f"patch_embed_gather {name} B{B} K{K}/{L} {'bf16 autocast' if amp else 'fp32'}"
            if not st.fits(what, 3 if not sh.quick else 5):
                continue
            with st.case(what):
                g = torch.Generator(device=dev).manual_seed(0)
                imgs = torch.randn(B, 3, S, S, device=dev, generator=g)
                ids, _, _ = random_masking(B, L, cfg.mask_ratio_f2, device=dev, generator=g)
                weight = torch.randn(cfg.embed_dim, 3, p, p, device=dev, generator=g) * 0.02
                bias = torch.randn(cfg.embed_dim, device=dev, generator=g) * 0.02
                pos = torch.randn(L, cfg.embed_dim, device=dev, generator=g) * 0.02
                grad_out = torch.randn(B, K, cfg.embed_dim, device=dev, generator=g)

                def run(fn, dtype=None, amp=amp, inputs=(imgs, weight, bias, pos), ids=ids, grad_out=grad_out):
                    leaves = [t.detach().clone().to(dtype or t.dtype).requires_grad_() for t in inputs]
                    with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                        out = fn(leaves[0], ids, *leaves[1:])
                    out.backward(grad_out.to(out.dtype))
                    return [out.detach()] + [t.grad for t in leaves]

                kernel = run(lambda *a: patch_embed_gather(*a, backend="triton"))
                again = run(lambda *a: patch_embed_gather(*a, backend="triton"))
                ref = run(patch_embed_gather_ref)
                oracle = run(_embed_all_then_gather, torch.float64, amp=None)
                row = {"check": "patch_embed_gather", "model": name, "batch": B, "kept": K, "patches": L,
                       "precision": "bf16 autocast" if amp else "fp32"}  # fmt: skip
                ok = True
                parts = ("out", "d_imgs", "d_weight", "d_bias", "d_pos")
                for part, a, r, o in zip(parts, kernel, ref, oracle, strict=True):
                    row[f"{part}_max_err_vs_ref"] = _err(a, r)
                    row[f"{part}_max_err_vs_fp64"] = _err(a, o)
                    row[f"{part}_ref_max_err_vs_fp64"] = _err(r, o)
                    ok &= _err(a, o) <= 2 * _err(r, o) + _atol(a.dtype if amp is None else torch.bfloat16) * _scale(o)
                row["deterministic"] = all(torch.equal(a, b) for a, b in zip(kernel, again, strict=True))
                row["ok"] = bool(ok)
                st.add(row)


def _embed_all_then_gather(imgs, ids_keep, weight, bias, pos):
    """The oracle, written independently of the kernel module (which takes no fp64): MAE's Conv2d over all L
    patches, + pos, then the kept rows. (B, C, H, W) -> (B, K, D)."""
    tokens = torch.nn.functional.conv2d(imgs, weight, bias, stride=weight.shape[-1]).flatten(2).transpose(1, 2)
    tokens = tokens + pos  # (B, L, D)
    return torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, tokens.shape[-1]))  # (B, K, D)


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def _scale(t: torch.Tensor) -> float:
    return max(float(t.abs().max()), 1.0)


def _atol(dtype) -> float:
    """Slack beyond 2x the reference's own error (flash-attention's rule): one rounding step of the dtype."""
    return {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}.get(dtype, 1e-5)


def run(st) -> None:
    """Stage "correctness": the gpu tests, then both kernels."""
    if st.shapes.device != "cuda" and not st.shapes.quick:
        st.skip("correctness", "no CUDA device")
        return
    gpu_tests(st)
    topk_kernel(st)
    gather_kernel(st)
