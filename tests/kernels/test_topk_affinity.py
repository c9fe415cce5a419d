"""The top-k affinity op: the PyTorch reference against a dense brute force, the Triton kernel (interpreted on
CPU) against the reference, on awkward grids, tiny and empty neighbourhoods, both shapes, fp32 and fp16."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from siammae.kernels.dispatch import triton_available
from siammae.kernels.topk_affinity import neighbourhood_reach, topk_affinity, topk_affinity_ref

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")


def _inputs(grid, D, T, F_, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    N = grid[0] * grid[1]
    q = F.normalize(torch.randn(T, N, D, generator=g), dim=-1).to(dtype)
    k = F.normalize(torch.randn(F_, N, D, generator=g), dim=-1).to(dtype)
    return q, k


def _dense(query, keys, grid, start, stop, n_ref, topk, temperature, radius, shape, restrict_ref):
    """Brute force in float64 with the protocols' own neighbourhood rules: the whole (N, M) score matrix."""
    T, N, D = query.shape
    h, w = grid
    ys, xs = torch.arange(N) // w, torch.arange(N) % w
    dy, dx = ys[None] - ys[:, None], xs[None] - xs[:, None]  # (N query, N key)
    if radius is None:
        near = torch.ones(N, N, dtype=torch.bool)
    elif shape == "square":  # DINO restrict_neighborhood
        near = (dy.abs() <= radius) & (dx.abs() <= radius)
    else:  # CRW MaskedAttention: float distance < radius
        near = (dy * dy + dx * dx).float() ** 0.5 < radius
    W_, I_ = torch.zeros(T, N, topk), torch.full((T, N, topk), -1)
    for t in range(T):
        frames = list(range(n_ref)) + list(range(start[t], stop[t]))
        s = query[t].double() @ keys[frames].double().reshape(-1, D).T  # (N, M)
        s = s.view(N, len(frames), N)
        for c, f in enumerate(frames):
            if f >= n_ref or restrict_ref:
                s[:, c].masked_fill_(~near, float("-inf"))
        s = s.reshape(N, -1)
        v, i = s.topk(min(topk, s.shape[1]), dim=1)
        kept = v > float("-inf")
        e = torch.where(kept, torch.exp((v - v[:, :1]) / temperature), 0.0)
        W_[t, :, : v.shape[1]] = (e / e.sum(1, keepdim=True)).float()
        flat = torch.tensor(frames)[i // N] * N + i % N
        I_[t, :, : v.shape[1]] = torch.where(kept, flat, -1)
    return torch.nan_to_num(W_), I_


CASES = [
    # grid, D, T, n_ref, short ranges, topk, radius, shape, restrict_ref
    ((3, 5), 16, 2, 1, [(1, 3), (2, 4)], 5, 1.5, "square", True),
    ((7, 4), 32, 3, 1, [(1, 2), (1, 3), (2, 4)], 4, 2.5, "circle", False),
    ((7, 4), 20, 1, 2, [(2, 5)], 7, 2, "circle", True),
    ((3, 5), 16, 2, 1, [(1, 1), (1, 2)], 3, None, "square", True),
]


@pytest.mark.parametrize("grid, D, T, n_ref, ranges, topk, radius, shape, restrict_ref", CASES)
def test_reference_equals_dense_brute_force(grid, D, T, n_ref, ranges, topk, radius, shape, restrict_ref):
    F_ = max(b for _, b in ranges)
    q, k = _inputs(grid, D, T, F_)
    start, stop = [a for a, _ in ranges], [b for _, b in ranges]
    kw = dict(n_ref=n_ref, topk=topk, temperature=0.1, radius=radius, neighbourhood=shape, restrict_ref=restrict_ref)
    W_, I_ = _dense(q, k, grid, start, stop, n_ref, topk, 0.1, radius, shape, restrict_ref)
    for block_elems in (1, 97, 1 << 22):  # one query per block, ragged blocks, one block
        w, i = topk_affinity_ref(q, k, grid, start, stop, block_elems=block_elems, **kw)
        assert torch.equal(i, I_)
        torch.testing.assert_close(w, W_, atol=1e-6, rtol=1e-5)


def test_neighbourhood_integer_form_matches_the_protocols():
    d = torch.arange(-30, 31)
    d2 = d[:, None] ** 2 + d[None] ** 2
    for radius in (0, 0.5, 1, 1.5, 2, 2.5, 12, 19.9, 20, 20.2):
        shape, reach, d2_max = neighbourhood_reach(radius, "circle")
        assert shape == 2
        assert torch.equal(d2 <= d2_max, d2.float() ** 0.5 < radius)  # CRW's float rule
        assert not (d2 <= d2_max)[(d.abs() > reach)].any()  # reach bounds the rows
        _, reach, _ = neighbourhood_reach(radius, "square")
        assert torch.equal(d.abs() <= reach, d.abs() <= radius)
    assert neighbourhood_reach(None, "circle")[0] == 0
    with pytest.raises(ValueError, match="neighbourhood must be one of"):
        neighbourhood_reach(3, "diamond")


TRITON_CASES = [
    # grid, D, T, n_ref, short ranges, topk, radius, shape, restrict_ref, dtype
    (
        (3, 5),
        16,
        2,
        1,
        [(1, 3), (2, 4)],
        5,
        1.5,
        "square",
        True,
        torch.float32,
    ),  # 3x5: not a multiple of tiles
    ((7, 4), 32, 3, 1, [(1, 2), (1, 3), (2, 4)], 4, 2.5, "circle", False, torch.float32),
    ((7, 4), 20, 2, 2, [(2, 4), (3, 5)], 3, 3, "circle", True, torch.float16),  # D not a multiple of 16
    ((3, 5), 16, 1, 1, [(1, 3)], 7, 0, "square", True, torch.float32),  # radius 0: 1 key per frame < k
    ((1, 1), 16, 2, 1, [(1, 2), (1, 3)], 2, 1, "circle", True, torch.float32),  # a single patch
    ((7, 4), 16, 2, 1, [(1, 2), (2, 3)], 5, None, "square", True, torch.float16),  # unrestricted
    # 3x3 tiles of 4x4: key tiles out of the bounding box (square) and corner tiles of the circle are skipped
    ((9, 10), 16, 1, 1, [(1, 2)], 3, 1.2, "circle", True, torch.float32),
    ((9, 10), 16, 1, 1, [(1, 2)], 6, 1, "square", False, torch.float32),
]


@needs_triton
@pytest.mark.parametrize("grid, D, T, n_ref, ranges, topk, radius, shape, restrict_ref, dtype", TRITON_CASES)
def test_triton_equals_reference(grid, D, T, n_ref, ranges, topk, radius, shape, restrict_ref, dtype):
    F_ = max(b for _, b in ranges)
    q, k = _inputs(grid, D, T, F_, seed=1, dtype=dtype)
    start, stop = [a for a, _ in ranges], [b for _, b in ranges]
    kw = dict(n_ref=n_ref, topk=topk, temperature=0.1, radius=radius, neighbourhood=shape, restrict_ref=restrict_ref)
    w_ref, i_ref = topk_affinity(q, k, grid, start, stop, backend="torch", **kw)
    w, i = topk_affinity(q, k, grid, start, stop, backend="triton", **kw)
    assert w.dtype == torch.float32 and i.dtype == torch.int64 and w.shape == (T, grid[0] * grid[1], topk)
    assert torch.equal(i, i_ref)
    torch.testing.assert_close(w, w_ref, atol=1e-6, rtol=1e-5)
    assert torch.all((i >= 0) | (w == 0))  # empty slots weigh nothing
    torch.testing.assert_close(w.sum(-1), torch.ones(T, grid[0] * grid[1]))


@needs_triton
@pytest.mark.parametrize("shape, radius, restrict_ref", [("square", 1, True), ("circle", 2.5, False)])
def test_triton_fused_gather_equals_reference(shape, radius, restrict_ref):
    grid, T, F_ = (7, 4), 2, 4
    q, k = _inputs(grid, 32, T, F_, seed=2)
    labels = torch.rand(F_, 28, 3, generator=torch.Generator().manual_seed(3))
    kw = dict(n_ref=1, topk=5, temperature=0.7, radius=radius, neighbourhood=shape, restrict_ref=restrict_ref)
    ref = topk_affinity(q, k, grid, [1, 2], [3, 4], labels=labels, backend="torch", **kw)
    out = topk_affinity(q, k, grid, [1, 2], [3, 4], labels=labels, backend="triton", **kw)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    w, i = topk_affinity(q, k, grid, [1, 2], [3, 4], backend="torch", **kw)  # the unfused op, gathered by hand
    manual = (labels.reshape(-1, 3)[i.clamp_min(0)] * w[..., None]).sum(2)
    torch.testing.assert_close(ref, manual, atol=1e-6, rtol=1e-5)


@needs_triton
def test_bf16_inputs_are_accumulated_in_fp32():
    q, k = _inputs((3, 5), 32, 1, 2, seed=4, dtype=torch.bfloat16)
    kw = dict(n_ref=1, topk=4, temperature=0.1, radius=2, neighbourhood="square", restrict_ref=True)
    w_ref, i_ref = topk_affinity(q, k, (3, 5), [1], [2], backend="torch", **kw)
    w, i = topk_affinity(q, k, (3, 5), [1], [2], backend="triton", **kw)
    assert torch.equal(i, i_ref)
    torch.testing.assert_close(w, w_ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_empty_neighbourhood_and_k_beyond_it(backend):
    """Radius 0: a square keeps the key under the query, a circle keeps nothing (distance < 0)."""
    q, k = _inputs((3, 5), 16, 1, 3, seed=5)
    kw = dict(n_ref=1, topk=4, temperature=0.1, restrict_ref=True, backend=backend)
    w, i = topk_affinity(q, k, (3, 5), [1], [3], radius=0, neighbourhood="square", **kw)
    own = torch.arange(15)
    expect = torch.stack([own, own + 15, own + 30], -1)  # the same patch of each of the 3 context frames
    assert torch.equal(i[0, :, :3].sort(-1).values, expect)
    assert torch.equal(i[0, :, 3], torch.full((15,), -1)) and torch.all(w[0, :, 3] == 0)
    labels = torch.rand(3, 15, 2)
    y = topk_affinity(q, k, (3, 5), [1], [3], radius=0, neighbourhood="circle", labels=labels, **kw)
    assert torch.equal(y, torch.zeros(1, 15, 2))
    w, i = topk_affinity(q, k, (3, 5), [1], [3], radius=0, neighbourhood="circle", **kw)
    assert torch.all(i == -1) and torch.all(w == 0)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_duplicate_context_frames_give_the_same_labels(backend):
    """CRW prefills the queue with copies of frame 0: ties between copies must not change the result."""
    q, k = _inputs((3, 5), 16, 1, 1, seed=6)
    bank = k.expand(4, -1, -1).contiguous()  # frame 0 four times
    labels = torch.rand(1, 15, 3, generator=torch.Generator().manual_seed(7)).expand(4, -1, -1)
    kw = dict(n_ref=1, topk=3, temperature=0.7, radius=None, backend=backend)
    y = topk_affinity(q, bank, (3, 5), [1], [4], labels=labels, **kw)
    best = (q[0] @ k[0].T).argmax(1)  # the best key is there 4 times, so all 3 slots hold it
    torch.testing.assert_close(y[0], labels[0, best])


def test_auto_backend_on_cpu_and_the_environment_override(monkeypatch):
    q, k = _inputs((3, 5), 16, 1, 2)
    kw = dict(n_ref=1, topk=3, temperature=0.1, radius=1, neighbourhood="square")
    monkeypatch.setenv("SIAMMAE_KERNEL_BACKEND", "torch")
    w, i = topk_affinity(q, k, (3, 5), [1], [2], **kw)
    w_ref, i_ref = topk_affinity_ref(q, k, (3, 5), [1], [2], **kw)
    assert torch.equal(w, w_ref) and torch.equal(i, i_ref)
    monkeypatch.setenv("SIAMMAE_KERNEL_BACKEND", "cuda")
    with pytest.raises(ValueError, match="SIAMMAE_KERNEL_BACKEND must be one of"):
        topk_affinity(q, k, (3, 5), [1], [2], **kw)
    with pytest.raises(ValueError, match="backend must be one of"):
        topk_affinity(q, k, (3, 5), [1], [2], backend="cuda", **kw)


def test_bad_inputs_name_the_problem():
    q, k = _inputs((3, 5), 16, 1, 2)
    kw = dict(n_ref=1, topk=3, temperature=0.1)
    with pytest.raises(ValueError, match="grid 4x4"):
        topk_affinity(q, k, (4, 4), [1], [2], **kw)
    with pytest.raises(ValueError, match="n_ref <= start <= stop"):
        topk_affinity(q, k, (3, 5), [0], [2], **kw)
    with pytest.raises(ValueError, match="query and keys differ"):
        topk_affinity(q, k.half(), (3, 5), [1], [2], **kw)
    with pytest.raises(ValueError, match="labels must be"):
        topk_affinity(q, k, (3, 5), [1], [2], labels=torch.zeros(2, 14, 3), **kw)


COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from siammae.kernels.topk_affinity import _topk_affinity_kernel

def build(dtype, K, shape, restrict_ref, gather, capability):
    sig = {"q_ptr": "*" + dtype, "k_ptr": "*" + dtype, "lab_ptr": "*fp32", "lo_ptr": "*i32", "hi_ptr": "*i32",
           "w_ptr": "*fp32", "i_ptr": "*i64", "y_ptr": "*fp32"}
    sig.update({name: "i32" for name in ("H", "W", "N", "D", "C", "n_ref", "reach", "d2_max")})
    sig["inv_temp"] = "fp32"
    consts = dict(K=K, KPAD=triton.next_power_of_2(K), SHAPE=shape, RESTRICT_REF=restrict_ref, QH=8, QW=8,
                  KH=4, KW=16, BLOCK_D=64, BLOCK_C=8, GATHER=gather, UPCAST=False,
                  DOT_PRECISION="ieee" if dtype == "fp32" else "tf32")
    sig.update({name: "constexpr" for name in consts})
    src = ASTSource(fn=_topk_affinity_kernel, signature=sig, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", capability, 32), options=dict(num_warps=4))

build("fp16", 7, 2, False, False, 90)  # siammae-davis on an H100 / H200
build("bf16", 10, 1, True, True, 80)  # fused gather, square, on an A100
build("fp32", 5, 1, True, False, 80)  # fp32 "ieee" dot
print("compiled")
"""


@needs_triton
def test_kernel_compiles_for_real_gpus(tmp_path):
    """The interpreter does not type-check like the compiler does: compile to cubin (ptxas ships with Triton)
    for sm_80 and sm_90, in a process that does not interpret, without needing a GPU."""
    import inspect
    import os
    import subprocess
    import sys

    from triton.compiler import ASTSource

    if "constexprs" not in inspect.signature(ASTSource).parameters:
        pytest.skip("this Triton's ASTSource predates the constexprs argument (Triton < 3.2)")
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1", TRITON_CACHE_DIR=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


def _tied_pair():
    """Two fp32 similarities a bit apart whose s / 0.1 rounds to the same fp32 number (DINO then ties them)."""
    s = torch.tensor(0.9, dtype=torch.float32)
    for _ in range(1000):
        t = torch.nextafter(s, torch.tensor(2.0))
        if t / 0.1 == s / 0.1:
            return s, t
        s = t
    raise AssertionError("no tied pair found")


def test_keep_ties_is_dinos_rule():
    """DINO: w = exp(s / 0.1) in fp32, every key with w >= the k-th largest kept (aff[aff < tk_val_min] = 0), w / sum.
    Query patch 0 has keys whose k-th and (k+1)-th similarities differ in the last bit but tie after / 0.1: DINO
    keeps k + 1 keys, keep_ties=True too (same weights, bit for bit), keep_ties=False keeps k."""
    lo, hi = _tied_pair()
    assert lo < hi
    k, N = 3, 6  # a 1 x 6 grid, one reference frame, no window
    sims = torch.tensor([0.99, 0.97, float(hi), float(lo), 0.5, 0.1])  # query 0's similarity to key j
    q = torch.zeros(1, N, 2)
    q[0, :, 0] = 1.0  # q . key = key[0] exactly
    keys = torch.zeros(1, N, 2)
    keys[0, :, 0] = sims
    keys[0, :, 1] = 1.0
    w, i = topk_affinity(q, keys, (1, N), [1], [1], n_ref=1, topk=k, temperature=0.1, keep_ties=True)
    aff = torch.exp((q[0] @ keys[0].T) / 0.1)  # DINO, dense: (N queries, N keys)
    tk_min = aff.topk(k, dim=1).values.min(1, keepdim=True).values
    aff[aff < tk_min] = 0
    aff = aff / aff.sum(1, keepdim=True)
    assert int((w[0, 0] > 0).sum()) == k + 1  # the tie kept
    dense = torch.zeros(N, N).scatter_add_(1, i[0].clamp_min(0), w[0])  # ours, dense (empty slots add 0)
    torch.testing.assert_close(dense, aff, atol=0, rtol=1e-6)
    w_k, _ = topk_affinity(q, keys, (1, N), [1], [1], n_ref=1, topk=k, temperature=0.1, keep_ties=False)
    assert w_k.shape[-1] == k and int((w_k[0, 0] > 0).sum()) == k
