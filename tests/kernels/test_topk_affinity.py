"""The top-k affinity op against its specification (siammae/kernels/topk_spec.py, the whole affinity matrix in
float64): the tiled PyTorch reference and the Triton kernel (interpreted on CPU) on awkward grids, tiny and empty
neighbourhoods, both shapes, fp32 / fp16 / bf16, and inputs full of exact ties."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from siammae.kernels.dispatch import triton_available
from siammae.kernels.topk_affinity import neighbourhood_reach, topk_affinity, topk_affinity_cpu
from siammae.kernels.topk_spec import context_scores, neighbourhood_mask, topk_affinity_spec

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")
BACKENDS = ["torch", pytest.param("triton", marks=needs_triton)]
# query tiles and key bands of the CPU path: single patches, ragged (3x2 tiles, 3-column bands), the defaults
LAYOUTS = [dict(tile=(1, 1), band=1), dict(tile=(3, 2), band=3), dict()]


def _inputs(grid, D, T, F_, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    N = grid[0] * grid[1]
    q = F.normalize(torch.randn(T, N, D, generator=g), dim=-1).to(dtype)
    k = F.normalize(torch.randn(F_, N, D, generator=g), dim=-1).to(dtype)
    return q, k


def _tied_inputs(grid, D, T, F_, seed=0, dtype=torch.float32, directions=3):
    """Every feature is one of ``directions`` unit axes, so every similarity is exactly 0 or 1: ties everywhere."""
    g = torch.Generator().manual_seed(seed)
    N = grid[0] * grid[1]
    axes = torch.eye(D)
    q = axes[torch.randint(0, directions, (T, N), generator=g)].to(dtype)
    k = axes[torch.randint(0, directions, (F_, N), generator=g)].to(dtype)
    return q, k


def _assert_equals_spec(w, i, q, k, grid, start, stop, **kw):
    """Weights and indices equal the specification's exactly (indices) and to fp32 rounding (weights)."""
    w_spec, i_spec = topk_affinity_spec(q, k, grid, start, stop, **kw)
    assert w.dtype == torch.float32 and i.dtype == torch.int64 and w.shape == w_spec.shape
    assert torch.equal(i, i_spec)
    torch.testing.assert_close(w, w_spec, atol=1e-6, rtol=1e-5)


def _assert_equals_spec_up_to_ties(w, i, q, k, grid, start, stop, **kw):
    """As the specification, except which of several keys tied at the k-th similarity are kept (and their order):
    as many keys, each a candidate of its query (in context, in reach), none twice, of exactly the specified
    similarities in descending order, with the specified weights."""
    w_spec, i_spec = topk_affinity_spec(q, k, grid, start, stop, **kw)
    kw.pop("topk"), kw.pop("temperature")
    scores = context_scores(q, k, grid, start, stop, **kw)  # (T, N, F N), -inf for a non-candidate
    kept = i >= 0
    assert torch.equal(kept, i_spec >= 0)
    got = scores.gather(2, i.clamp_min(0)).masked_fill(~kept, float("-inf"))
    want = scores.gather(2, i_spec.clamp_min(0)).masked_fill(~kept, float("-inf"))
    assert torch.all(got[kept] > float("-inf"))  # only candidates
    assert torch.equal(got, want)
    s = i.sort(-1).values
    assert not ((s[..., 1:] == s[..., :-1]) & (s[..., 1:] >= 0)).any()  # no key twice
    torch.testing.assert_close(w, w_spec, atol=1e-6, rtol=1e-5)


CASES = [
    # grid, D, T, n_ref, short ranges, topk, radius, shape, restrict_ref
    ((3, 5), 16, 2, 1, [(1, 3), (2, 4)], 5, 1.5, "square", True),
    ((7, 4), 32, 3, 1, [(1, 2), (1, 3), (2, 4)], 4, 2.5, "circle", False),
    ((7, 4), 20, 1, 2, [(2, 5)], 7, 2, "circle", True),
    ((3, 5), 16, 2, 1, [(1, 1), (1, 2)], 3, None, "square", True),  # an empty short-term context
    ((1, 7), 3, 2, 1, [(1, 2), (1, 3)], 4, 2, "square", False),  # one row, 3 channels
    ((5, 1), 5, 1, 2, [(2, 3)], 9, 1, "circle", True),  # one column; k beyond the keys in reach
]


def _case(grid, D, T, n_ref, ranges, topk, radius, shape, restrict_ref):
    F_ = max([b for _, b in ranges] + [n_ref])
    start, stop = [a for a, _ in ranges], [b for _, b in ranges]
    kw = dict(n_ref=n_ref, topk=topk, temperature=0.1, radius=radius, neighbourhood=shape, restrict_ref=restrict_ref)
    return F_, start, stop, kw


def test_the_specification_states_the_rules():
    """The specification on a case small enough to check by hand: a 1 x 3 grid, one reference frame."""
    q = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]])  # (T=1, N=3, D=2)
    k = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]])  # (F=1, N=3, D=2)
    kw = dict(n_ref=1, topk=2, temperature=0.5, neighbourhood="square")
    w, i = topk_affinity_spec(q, k, (1, 3), [1], [1], radius=None, **kw)
    # query 0 scores (1, 0, 0.6): keys 0 and 2; query 1 (0.6, 0.8, 1.0): keys 2 and 1; query 2 (0, 1, 0.8): 1, 2
    assert i.tolist() == [[[0, 2], [2, 1], [1, 2]]]
    e = torch.exp(torch.tensor([0.0, -0.4 / 0.5]))
    torch.testing.assert_close(w[0, 0], e / e.sum())
    w, i = topk_affinity_spec(q, k, (1, 3), [1], [1], radius=0, **kw)  # each query reaches its own key only
    assert i.tolist() == [[[0, -1], [1, -1], [2, -1]]] and w[0, :, 1].eq(0).all() and w[0, :, 0].eq(1).all()
    w, i = topk_affinity_spec(q, k, (1, 3), [1], [1], radius=0, **{**kw, "neighbourhood": "circle"})
    assert i.eq(-1).all() and w.eq(0).all()  # distance < 0: nothing in reach
    tied = torch.tensor([[[1.0, 0.0]] * 3])  # every key of the query ties: the lowest indices are kept
    assert topk_affinity_spec(tied, tied, (1, 3), [1], [1], radius=None, **kw)[1].tolist() == [[[0, 1]] * 3]
    labels = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]])
    y = topk_affinity_spec(q, k, (1, 3), [1], [1], radius=None, labels=labels, **kw)
    w, i = topk_affinity_spec(q, k, (1, 3), [1], [1], radius=None, **kw)
    torch.testing.assert_close(y[0, 0], w[0, 0, 0] * labels[0, 0] + w[0, 0, 1] * labels[0, 2])


def test_the_specifications_neighbourhoods_are_the_protocols():
    near = neighbourhood_mask((5, 5), 1.5, "square")
    assert near[12].reshape(5, 5).int().tolist() == [
        [0] * 5,
        [0, 1, 1, 1, 0],
        [0, 1, 1, 1, 0],
        [0, 1, 1, 1, 0],
        [0] * 5,
    ]
    near = neighbourhood_mask((5, 5), 2, "circle")  # distance < 2: the centre and its 4 neighbours... and the
    assert near[12].reshape(5, 5).int().tolist() == [  # diagonals at sqrt(2)
        [0, 0, 0, 0, 0],
        [0, 1, 1, 1, 0],
        [0, 1, 1, 1, 0],
        [0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0],
    ]
    assert neighbourhood_mask((2, 3), None, "circle").all()


@pytest.mark.parametrize("grid, D, T, n_ref, ranges, topk, radius, shape, restrict_ref", CASES)
def test_tiled_reference_equals_the_specification(grid, D, T, n_ref, ranges, topk, radius, shape, restrict_ref):
    F_, start, stop, kw = _case(grid, D, T, n_ref, ranges, topk, radius, shape, restrict_ref)
    q, k = _inputs(grid, D, T, F_)
    for layout in LAYOUTS:  # one query per tile and one column per band, ragged tiles and bands, the defaults
        w, i = topk_affinity_cpu(q, k, grid, start, stop, **layout, **kw)
        _assert_equals_spec(w, i, q, k, grid, start, stop, **kw)
    labels = torch.rand(F_, grid[0] * grid[1], 3, generator=torch.Generator().manual_seed(1))
    y = topk_affinity_cpu(q, k, grid, start, stop, labels=labels, **LAYOUTS[1], **kw)
    torch.testing.assert_close(y, topk_affinity_spec(q, k, grid, start, stop, labels=labels, **kw))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", [0, 1, 4, 5])
def test_ties_keep_keys_of_the_specified_similarities(backend, case):
    """Every similarity is 0 or 1: the GPU kernel may keep any of the tied keys, but not other similarities or
    weights; the CPU path keeps the specification's (similarity down, then bank index up), whatever its layout."""
    grid, D, T, n_ref, ranges, topk, radius, shape, restrict_ref = CASES[case]
    F_, start, stop, kw = _case(grid, D, T, n_ref, ranges, topk, radius, shape, restrict_ref)
    q, k = _tied_inputs(grid, max(D, 3), T, F_, seed=case)
    if backend == "torch":
        for layout in LAYOUTS:
            w, i = topk_affinity_cpu(q, k, grid, start, stop, **layout, **kw)
            _assert_equals_spec(w, i, q, k, grid, start, stop, **kw)
    else:
        w, i = topk_affinity(q, k, grid, start, stop, backend="triton", **kw)
        _assert_equals_spec_up_to_ties(w, i, q, k, grid, start, stop, **kw)


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
    ((3, 5), 16, 2, 1, [(1, 3), (2, 4)], 5, 1.5, "square", True, torch.float32),  # 3x5: not a multiple of tiles
    ((7, 4), 32, 3, 1, [(1, 2), (1, 3), (2, 4)], 4, 2.5, "circle", False, torch.float32),
    ((7, 4), 20, 2, 2, [(2, 4), (3, 5)], 3, 3, "circle", True, torch.float16),  # D not a multiple of 16
    ((3, 5), 16, 1, 1, [(1, 3)], 7, 0, "square", True, torch.float32),  # radius 0: 1 key per frame < k
    ((1, 1), 16, 2, 1, [(1, 2), (1, 3)], 2, 1, "circle", True, torch.float32),  # a single patch
    ((7, 4), 16, 2, 1, [(1, 2), (2, 3)], 5, None, "square", True, torch.float16),  # unrestricted
    # 3x3 tiles of 4x4: key tiles out of the bounding box (square) and corner tiles of the circle are skipped
    ((9, 10), 16, 1, 1, [(1, 2)], 3, 1.2, "circle", True, torch.float32),
    ((9, 10), 16, 1, 1, [(1, 2)], 6, 1, "square", False, torch.float32),
    ((1, 7), 3, 2, 1, [(1, 2), (1, 3)], 4, 2, "square", False, torch.float32),  # one row, 3 channels
]


@needs_triton
@pytest.mark.parametrize("grid, D, T, n_ref, ranges, topk, radius, shape, restrict_ref, dtype", TRITON_CASES)
def test_triton_equals_the_specification(grid, D, T, n_ref, ranges, topk, radius, shape, restrict_ref, dtype):
    F_ = max(b for _, b in ranges)
    q, k = _inputs(grid, D, T, F_, seed=1, dtype=dtype)
    start, stop = [a for a, _ in ranges], [b for _, b in ranges]
    kw = dict(n_ref=n_ref, topk=topk, temperature=0.1, radius=radius, neighbourhood=shape, restrict_ref=restrict_ref)
    w, i = topk_affinity(q, k, grid, start, stop, backend="triton", **kw)
    _assert_equals_spec(w, i, q, k, grid, start, stop, **kw)
    assert torch.all((i >= 0) | (w == 0))  # empty slots weigh nothing
    torch.testing.assert_close(w.sum(-1), torch.ones(T, grid[0] * grid[1]))


@needs_triton
@pytest.mark.parametrize("shape, radius, restrict_ref", [("square", 1, True), ("circle", 2.5, False)])
def test_triton_fused_gather_equals_the_specification(shape, radius, restrict_ref):
    grid, T, F_ = (7, 4), 2, 4
    q, k = _inputs(grid, 32, T, F_, seed=2)
    labels = torch.rand(F_, 28, 3, generator=torch.Generator().manual_seed(3))
    kw = dict(n_ref=1, topk=5, temperature=0.7, radius=radius, neighbourhood=shape, restrict_ref=restrict_ref)
    spec = topk_affinity_spec(q, k, grid, [1, 2], [3, 4], labels=labels, **kw)
    out = topk_affinity(q, k, grid, [1, 2], [3, 4], labels=labels, backend="triton", **kw)
    torch.testing.assert_close(out, spec, atol=1e-6, rtol=1e-5)
    w, i = topk_affinity(q, k, grid, [1, 2], [3, 4], backend="triton", **kw)  # the unfused op, gathered by hand
    manual = (labels.reshape(-1, 3)[i.clamp_min(0)] * w[..., None]).sum(2)
    torch.testing.assert_close(out, manual, atol=1e-6, rtol=1e-5)


@needs_triton
def test_bf16_inputs_are_accumulated_in_fp32():
    q, k = _inputs((3, 5), 32, 1, 2, seed=4, dtype=torch.bfloat16)
    kw = dict(n_ref=1, topk=4, temperature=0.1, radius=2, neighbourhood="square", restrict_ref=True)
    w, i = topk_affinity(q, k, (3, 5), [1], [2], backend="triton", **kw)
    _assert_equals_spec(w, i, q, k, (3, 5), [1], [2], **kw)


@pytest.mark.parametrize("backend", BACKENDS)
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


@pytest.mark.parametrize("backend", BACKENDS)
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
    w_ref, i_ref = topk_affinity_cpu(q, k, (3, 5), [1], [2], **kw)
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
from siammae.kernels.topk_kernel import _topk_affinity_kernel

def build(dtype, K, shape, restrict_ref, gather, capability):
    sig = {"q_ptr": "*" + dtype, "k_ptr": "*" + dtype, "lab_ptr": "*fp32", "lo_ptr": "*i32", "hi_ptr": "*i32",
           "w_ptr": "*fp32", "i_ptr": "*i64", "y_ptr": "*fp32"}
    sig.update({name: "i32" for name in ("H", "W", "N", "D", "C", "n_ref", "reach", "d2_max")})
    sig["inv_temp"] = "fp32"
    consts = dict(K=K, KPAD=triton.next_power_of_2(K), SHAPE=shape, RESTRICT_REF=restrict_ref, QH=8, QW=8,
                  KH=4, KW=16, BLOCK_D=64, BLOCK_C=8, GATHER=gather, RAW=False, UPCAST=False,
                  DOT_PRECISION="ieee" if dtype == "fp32" else "tf32")
    sig.update({name: "constexpr" for name in consts})
    src = ASTSource(fn=_topk_affinity_kernel, signature=sig, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", capability, 32), options=dict(num_warps=4))

import sys
dtype, K, shape, restrict_ref, gather, capability = sys.argv[1:]
build(dtype, int(K), int(shape), restrict_ref == "1", gather == "1", int(capability))
print("compiled")
"""

BUILDS = [
    pytest.param(("fp16", 7, 2, 0, 0, 90), id="fp16-circle-sm90"),  # siammae-davis on an H100 / H200
    pytest.param(("bf16", 10, 1, 1, 1, 80), marks=pytest.mark.slow, id="bf16-gather-sm80"),  # fused gather, square
    pytest.param(("fp32", 5, 1, 1, 0, 80), marks=pytest.mark.slow, id="fp32-sm80"),  # fp32 "ieee" dot
]


@needs_triton
@pytest.mark.parametrize("build", BUILDS)
def test_kernel_compiles_for_real_gpus(build, tmp_path):
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
    args = [str(a) for a in build]
    done = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, *args], env=env, capture_output=True, text=True)
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_keep_ties_is_dinos_rule(backend):
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
    w, i = topk_affinity(q, keys, (1, N), [1], [1], n_ref=1, topk=k, temperature=0.1, keep_ties=True, backend=backend)
    aff = torch.exp((q[0] @ keys[0].T) / 0.1)  # DINO, dense: (N queries, N keys)
    tk_min = aff.topk(k, dim=1).values.min(1, keepdim=True).values
    aff[aff < tk_min] = 0
    aff = aff / aff.sum(1, keepdim=True)
    assert int((w[0, 0] > 0).sum()) == k + 1  # the tie kept
    dense = torch.zeros(N, N).scatter_add_(1, i[0].clamp_min(0), w[0])  # ours, dense (empty slots add 0)
    torch.testing.assert_close(dense, aff, atol=0, rtol=1e-6)
    w_k, _ = topk_affinity(
        q, keys, (1, N), [1], [1], n_ref=1, topk=k, temperature=0.1, keep_ties=False, backend=backend
    )
    assert w_k.shape[-1] == k and int((w_k[0, 0] > 0).sum()) == k


# ------------------------------------------------------------------------------------------------------------
# The CPU path's blocking: awkward grids, radius windows at the borders, runs widened to MIN_GEMM, ties
# ------------------------------------------------------------------------------------------------------------
BLOCKED_CASES = [
    # grid, D, n_ref, ranges, topk, radius, shape, restrict_ref: windows cut by every border of 13x21 / 17x9
    ((13, 21), 24, 1, [(1, 4), (2, 5)], 7, 3.5, "circle", False),
    ((13, 21), 24, 2, [(2, 5)], 5, 4, "square", True),
    ((17, 9), 8, 1, [(1, 3)], 10, 1, "circle", True),  # tiny windows: most runs shorter than MIN_GEMM
    ((17, 9), 8, 1, [(1, 3)], 3, None, "square", True),  # unrestricted: one run per frame
]


@pytest.mark.parametrize("grid, D, n_ref, ranges, topk, radius, shape, restrict_ref", BLOCKED_CASES)
def test_cpu_path_blocking_equals_the_specification(grid, D, n_ref, ranges, topk, radius, shape, restrict_ref):
    F_, start, stop, kw = _case(grid, D, len(ranges), n_ref, ranges, topk, radius, shape, restrict_ref)
    q, k = _inputs(grid, D, len(ranges), F_, seed=11)
    for layout in (*LAYOUTS, dict(tile=(5, 3), band=2), dict(tile=(16, 16), band=16)):
        w, i = topk_affinity_cpu(q, k, grid, start, stop, **layout, **kw)
        _assert_equals_spec(w, i, q, k, grid, start, stop, **kw)
        tq, tk = _tied_inputs(grid, max(D, 3), len(ranges), F_, seed=3)  # every similarity 0 or 1
        w, i = topk_affinity_cpu(tq, tk, grid, start, stop, **layout, **kw)
        _assert_equals_spec(w, i, tq, tk, grid, start, stop, **kw)  # the specification's tied keys too


def test_cpu_path_many_groups_equal_the_specification():
    """A tile with many groups of scores takes its best groups in two steps (super-groups first): still the
    specification's keys, on random inputs and on inputs where every similarity ties (ties at every level)."""
    grid, F_, kw = (12, 20), 10, dict(n_ref=1, topk=3, temperature=0.1, radius=None, restrict_ref=True)
    start, stop = [1, 2], [9, 10]
    for q, k in (_inputs(grid, 24, 2, F_, seed=6), _tied_inputs(grid, 24, 2, F_, seed=6)):
        w, i = topk_affinity_cpu(q, k, grid, start, stop, **kw)
        _assert_equals_spec(w, i, q, k, grid, start, stop, **kw)


def test_cpu_path_is_the_same_on_any_number_of_threads():
    """The tiles go to one thread each when PyTorch has several: the same bits as one thread, on random and on tied
    inputs, and PyTorch's thread count is as it was after the call."""
    grid, D, n_ref, ranges, topk, radius, shape, restrict_ref = BLOCKED_CASES[0]
    F_, start, stop, kw = _case(grid, D, len(ranges), n_ref, ranges, topk, radius, shape, restrict_ref)
    threads = torch.get_num_threads()
    try:
        for q, k in (_inputs(grid, D, len(ranges), F_, seed=4), _tied_inputs(grid, D, len(ranges), F_, seed=4)):
            got = {}
            for n in (1, 3):
                torch.set_num_threads(n)
                got[n] = topk_affinity_cpu(q, k, grid, start, stop, **kw)
                assert torch.get_num_threads() == n
            assert torch.equal(got[1][0], got[3][0]) and torch.equal(got[1][1], got[3][1])
    finally:
        torch.set_num_threads(threads)


def test_cpu_path_similarities_are_the_whole_matrix_products():
    """DINO scores all keys in one bmm; the CPU path's blocks must give the same fp32 numbers (a last-bit difference
    can swap near-tied keys), on the shapes of a real grid (15x24 at D 384: 240 px frames, ViT-S/16)."""
    grid, D = (15, 24), 384
    q, k = _inputs(grid, D, 1, 3, seed=5)
    full = torch.bmm(q.repeat(3, 1, 1), k.transpose(1, 2).contiguous()).permute(1, 0, 2).reshape(q.shape[1], -1)
    for radius, shape, restrict_ref in ((12, "square", True), (20, "circle", False), (3, "circle", True)):
        kw = dict(n_ref=1, topk=9, temperature=1.0, radius=radius, neighbourhood=shape, restrict_ref=restrict_ref)
        v, i = topk_affinity_cpu(q, k, grid, [1], [3], raw=True, **kw)
        assert torch.equal(v[0], full.gather(1, i[0])), (radius, shape)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keep_ties_on_every_backend_is_the_specifications_choice_up_to_ties(backend):
    """Both tie rules on both backends against the specification, on inputs full of exact ties: keep_ties=False
    keeps k keys of the specified similarities; keep_ties=True (DINO) keeps every key tied with the k-th, so its
    kept similarities are exactly those >= the specification's k-th, weighted alike."""
    grid, D, T, n_ref, ranges, topk, radius, shape, restrict_ref = CASES[1]
    F_, start, stop, kw = _case(grid, D, T, n_ref, ranges, topk, radius, shape, restrict_ref)
    q, k = _tied_inputs(grid, D, T, F_, seed=2)
    w, i = topk_affinity(q, k, grid, start, stop, backend=backend, keep_ties=False, **kw)
    _assert_equals_spec_up_to_ties(w, i, q, k, grid, start, stop, **kw)
    w, i = topk_affinity(q, k, grid, start, stop, backend=backend, keep_ties=True, **kw)
    scores = context_scores(q, k, grid, start, stop, n_ref=n_ref, radius=radius, neighbourhood=shape,
                            restrict_ref=restrict_ref)  # fmt: skip
    _, i_spec = topk_affinity_spec(q, k, grid, start, stop, **kw)
    kth = scores.gather(2, i_spec.clamp_min(0)).masked_fill(i_spec < 0, float("inf")).amin(2)  # (T, N)
    want = ((scores >= kth[..., None]) & (scores > float("-inf"))).sum(2)  # every key tied with the k-th kept
    assert torch.equal((i >= 0).sum(2), want)
    e = torch.exp(scores / 0.1).masked_fill(scores < kth[..., None], 0)  # DINO's weights over the kept keys
    got = torch.zeros_like(e).scatter_add_(2, i.clamp_min(0), w.double())
    torch.testing.assert_close(got, e / e.sum(2, keepdim=True), atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# Copies of a frame (a prefilled queue): scored once on the CPU path, the same result
# ------------------------------------------------------------------------------------------------------------
def _bank_with_copies(grid, D, T, n_ref, copies, after, seed, tied, src=0):
    """A bank of n_ref references, ``copies`` copies of frame ``src`` (0, or a frame after the copies), then
    ``after`` frames; queries of T frames. With ``tied``, every feature is one of a few (keys tied inside a copy,
    and across copies)."""
    make = _tied_inputs if tied else _inputs
    q, k = make(grid, D, T, n_ref + copies + after, seed=seed)
    k[n_ref : n_ref + copies] = k[src]
    return q, k.contiguous()


COPY_CASES = [
    # grid, T, n_ref, copies of frame src, after, ranges (start, stop per query frame), topk, radius, shape,
    # restrict_ref
    ((9, 13), 3, 1, 6, 0, 3, [(1, 7), (2, 8), (4, 10)], 2, 3.5, "circle", False),  # k below the copies read
    ((9, 13), 2, 2, 4, 0, 2, [(2, 6), (3, 8)], 9, 4, "square", True),  # k beyond them
    ((7, 9), 4, 1, 5, 0, 4, [(1, 6), (2, 7), (6, 10), (3, 8)], 3, None, "square", True),  # a frame reads no copy
    ((7, 9), 1, 1, 3, 0, 0, [(1, 4)], 4, 2, "circle", True),
    ((7, 9), 2, 1, 4, 5, 2, [(1, 5), (1, 7)], 3, 2, "circle", True),  # copies of frame 5, not in frame 0's context
]


@pytest.mark.parametrize("grid, T, n_ref, copies, src, after, ranges, topk, radius, shape, restrict_ref", COPY_CASES)
def test_cpu_path_scores_copies_once_with_the_same_result(
    grid, T, n_ref, copies, src, after, ranges, topk, radius, shape, restrict_ref, monkeypatch
):
    """Frames that the call says are copies of frame 0 are scored once: fewer keys go through the GEMMs, and the
    weights, indices, gathered labels and raw similarities are bit for bit those of scoring every copy, and the
    specification's, on random features and on features full of ties (inside a copy and between copies)."""
    start, stop = [a for a, _ in ranges], [b for _, b in ranges]
    kw = dict(n_ref=n_ref, topk=topk, temperature=0.1, radius=radius, neighbourhood=shape, restrict_ref=restrict_ref)
    hint = (src, n_ref, n_ref + copies)
    scored = []
    bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda a, b, **o: scored.append(a.shape[0] * a.shape[1]) or bmm(a, b, **o))
    for tied in (False, True):
        q, k = _bank_with_copies(grid, 16, T, n_ref, copies, after, seed=9, tied=tied, src=src)
        labels = torch.rand(k.shape[0], k.shape[1], 3, generator=torch.Generator().manual_seed(2))
        labels[n_ref : n_ref + copies] = labels[src]
        for extra in (dict(), dict(labels=labels), dict(raw=True, temperature=1.0), dict(keep_ties=True)):
            scored.clear()
            every = topk_affinity_cpu(q, k, grid, start, stop, **{**kw, **extra})
            n_every = sum(scored)
            scored.clear()
            once = topk_affinity_cpu(q, k, grid, start, stop, copies=hint, **{**kw, **extra})
            assert sum(scored) < n_every  # the copies were not all scored
            as_list = lambda r: list(r) if isinstance(r, tuple) else [r]  # noqa: E731
            for a, b in zip(as_list(every), as_list(once), strict=True):
                assert torch.equal(a, b), (tied, extra)
        w, i = topk_affinity(q, k, grid, start, stop, copies=hint, backend="torch", **kw)
        _assert_equals_spec(w, i, q, k, grid, start, stop, **kw)


def test_a_wrong_copies_claim_is_an_error():
    q, k = _bank_with_copies((3, 5), 8, 1, 1, 3, 0, seed=1, tied=False)
    kw = dict(n_ref=1, topk=2, temperature=0.1, backend="torch")
    k[2, 4, 0] += 1e-6  # one feature of one copy differs
    with pytest.raises(ValueError, match="frames 1 .. 3 are not copies of frame 0"):
        topk_affinity(q, k, (3, 5), [1], [4], copies=(0, 1, 4), **kw)
    with pytest.raises(ValueError, match="copies \\(0, 0, 2\\): need"):  # a reference frame is not a copy
        topk_affinity(q, k, (3, 5), [1], [4], copies=(0, 0, 2), **kw)
    with pytest.raises(ValueError, match="frame numbers"):
        topk_affinity(q, k, (3, 5), [1], [4], copies=(0, 1), **kw)
