"""Label propagation: a hand-computed case, equality with direct dense implementations of DINO's and CRW's
algorithms (written here from docs/PROTOCOL.md), objects that appear later, bounded memory, the
label conversions against PIL, the presets, and a run on real frames and masks."""

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import dino_dense, dino_output
from PIL import Image

from siammae.data.transforms import DINO_STD, IMAGENET_MEAN, IMAGENET_STD
from siammae.errors import InputError
from siammae.kernels.dispatch import triton_available
from siammae.propagation import (
    InputConfig,
    Preset,
    PropagationConfig,
    Propagator,
    default_preset,
    get_preset,
    labels_to_mask,
    mask_to_labels,
    preset_names,
    propagate_labels,
    register_preset,
)

BACKENDS = [
    "torch",
    pytest.param("triton", marks=pytest.mark.skipif(not triton_available(), reason="no triton")),
]


# ------------------------------------------------------------------------------------------------------------
# Direct dense implementations of the two protocols (the whole affinity matrix, as the original scripts)
# ------------------------------------------------------------------------------------------------------------
def crw_dense(feats, first_soft, topk, temperature, n_last, radius):
    """ajabri/videowalk test.py: n copies of frame 0 in front, frame 0 as unrestricted long memory, an
    additive -1e10 circle mask on the short-term frames, topk then softmax."""
    h, w, D = feats[0].shape
    N = h * w
    C = first_soft.shape[0]
    f = [F.normalize(x.reshape(N, D), dim=1) for x in feats]
    padded = [f[0]] * (n_last + 1) + f[1:]
    lbls = [first_soft.reshape(C, N).T] * (n_last + 1) + [None] * (len(feats) - 1)
    gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    gy, gx = gy.flatten(), gx.flatten()
    dist = ((gy[:, None] - gy[None]) ** 2 + (gx[:, None] - gx[None]) ** 2).float() ** 0.5
    add = torch.where(dist < radius, 0.0, -1e10)  # (Nk, Nq), symmetric
    out = []
    for t in range(1, len(feats)):
        p = n_last + t
        key_idx = [0] + list(range(p - n_last, p))
        A = torch.stack([padded[i] @ padded[p].T for i in key_idx])  # (ctx, Nk, Nq)
        A[1:] += add
        A = A.reshape(-1, N) / temperature
        weights, ids = torch.topk(A, topk, dim=0)
        weights = F.softmax(weights, dim=0)
        ctx = torch.cat([lbls[i] for i in key_idx])  # (ctx*N, C)
        pred = (ctx[ids] * weights[..., None]).sum(0)  # (Nq, C)
        lbls[p] = pred
        out.append(pred.T.reshape(C, h, w))
    return out


def _video(T, h, w, D, seed=0):
    """Random features with temporal coherence: a slowly drifting field, so propagation has structure."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(h, w, D, generator=g)
    return [base + 0.6 * t**0.5 * torch.randn(h, w, D, generator=g) for t in range(T)]


def _ids(h, w, seed=0, ids=(0, 1, 2)):
    g = torch.Generator().manual_seed(seed)
    choice = torch.tensor(ids)
    return choice[torch.randint(0, len(ids), (h, w), generator=g)]


# ------------------------------------------------------------------------------------------------------------
# Propagation
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [1, 2])
def test_hand_computed_case(chunk_size):
    """Grid 1x2, D 2, k 2, T 1, n 1, no neighbourhood: weights are softmaxes of known cosines."""
    a, b = [1.0, 0.0], [0.0, 1.0]
    feats = [torch.tensor([[a, b]]), torch.tensor([[a, [0.6, 0.8]]]), torch.tensor([[a, a]])]
    first = torch.tensor([[1, 0]])  # patch a is object 1, patch b background
    cfg = PropagationConfig(topk=2, temperature=1.0, n_last=1, radius=None)
    out = list(propagate_labels(feats, first, cfg, chunk_size=chunk_size, backend="torch"))
    e = math.e
    # frame 1, patch (1, 0): cosines 1 (a, object) and 0 (b): weights e/(e+1), 1/(e+1)
    p = [1 / (e + 1), e / (e + 1)]
    # patch [0.6, 0.8]: cosines 0.6 (a) and 0.8 (b): weight of b = 1 / (1 + e^-0.2)
    q = [1 / (1 + math.exp(-0.2)), 1 - 1 / (1 + math.exp(-0.2))]
    torch.testing.assert_close(out[0], torch.tensor([[[p[0], q[0]]], [[p[1], q[1]]]]))
    # frame 2, both patches = a: keys a (frame 0) and (1, 0) of frame 1 both at cosine 1, 0.5 each
    r = [(0.0 + p[0]) / 2, (1.0 + p[1]) / 2]
    torch.testing.assert_close(out[1], torch.tensor([[[r[0], r[0]]], [[r[1], r[1]]]]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_dino_preset_equals_dense_dino(backend):
    h, w, D, T, patch = 5, 6, 16, 7, 8
    feats = _video(T, h, w, D, seed=1)
    first = _ids(h, w, seed=1, ids=(0, 2, 5))  # ids 1, 3, 4 absent
    consts = dict(topk=5, temperature=0.1, n_last=3, radius=2)
    dense = dino_dense(feats, first, **consts)
    out = list(propagate_labels(feats, first, "dino", chunk_size=4, backend=backend, **consts))  # 4 + 2
    assert len(out) == T - 1 and out[0].shape == (6, h, w)
    cfg = get_preset("dino", **consts).propagation
    out_hw = (h * patch + 3, w * patch - 5)  # the original size is not a multiple of the patch
    for ours, ref in zip(out, dense, strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
        mask = labels_to_mask(ours, out_hw, patch, cfg)
        assert np.array_equal(mask.numpy(), dino_output(ref.clone(), patch, out_hw))


@pytest.mark.parametrize("backend", BACKENDS)
def test_siammae_preset_equals_dense_crw(backend):
    h, w, D, T = 5, 6, 16, 7
    feats = _video(T, h, w, D, seed=2)
    first = F.one_hot(_ids(h, w, seed=2), 3).permute(2, 0, 1).float()
    consts = dict(topk=4, temperature=0.7, n_last=3, radius=2.5)
    dense = crw_dense(feats, first, **consts)
    out = list(propagate_labels(feats, first, "siammae-davis", chunk_size=5, backend=backend, **consts))  # 5+1
    for ours, ref in zip(out, dense, strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_chunking_does_not_change_the_result():
    feats = _video(10, 4, 5, 8, seed=3)
    first = _ids(4, 5, seed=3)
    runs = [
        torch.stack(list(propagate_labels(feats, first, "siammae-vip", chunk_size=c, n_last=4, radius=2)))
        for c in (1, 3, 9)
    ]
    torch.testing.assert_close(runs[1], runs[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(runs[2], runs[0], atol=1e-6, rtol=0)


def test_ids_are_preserved_and_soft_labels_propagate():
    """With k 1 and a static video every patch copies itself: id 7 stays 7 with ids 1..6 absent, and float
    soft labels (JHMDB heatmaps, C 16) come out unchanged."""
    h, w, D, patch = 4, 6, 8, 4
    feat = torch.randn(h, w, D, generator=torch.Generator().manual_seed(4))
    first = _ids(h, w, seed=4, ids=(0, 7))
    cfg = get_preset("dino", topk=1).propagation
    out = list(propagate_labels([feat] * 4, first, cfg, backend="torch"))
    assert out[-1].shape[0] == 8
    mask = labels_to_mask(out[-1], (h * patch, w * patch), patch, cfg)
    assert set(mask.unique().tolist()) == {0, 7}
    assert torch.equal(out[-1].argmax(0), first)
    heat = torch.rand(16, h, w, generator=torch.Generator().manual_seed(5))
    out = list(propagate_labels([feat] * 3, heat, "siammae-jhmdb", topk=1, backend="torch"))
    torch.testing.assert_close(out[-1], heat)


def dense_with_references(feats, first_ids, given, cfg):
    """Context = reference frames (frame 0 and every frame with a given mask) + the last n other frames."""
    h, w, D = feats[0].shape
    N = h * w
    ys, xs = torch.arange(N) // w, torch.arange(N) % w
    dy, dx = ys[None] - ys[:, None], xs[None] - xs[:, None]
    near = (dy * dy + dx * dx).float() ** 0.5 < cfg.radius if cfg.neighbourhood == "circle" else None
    if near is None:
        near = (dy.abs() <= cfg.radius) & (dx.abs() <= cfg.radius)
    f = [F.normalize(x.reshape(N, D), dim=1) for x in feats]
    labels = {0: F.one_hot(first_ids.reshape(N), int(first_ids.max()) + 1).float()}
    refs, queue, out = [0], [], []
    for t in range(1, len(feats)):
        ctx = refs + queue[-cfg.n_last :] if cfg.n_last else refs
        s = torch.stack([f[t] @ f[i].T for i in ctx])  # (ctx, Nq, Nk)
        for c, i in enumerate(ctx):
            if i not in refs or cfg.restrict_reference:
                s[c].masked_fill_(~near, float("-inf"))
        s = s.permute(1, 0, 2).reshape(N, -1)
        v, idx = s.topk(cfg.topk, dim=1)
        wts = torch.softmax(v / cfg.temperature, dim=1)
        C = max(lab.shape[1] for lab in labels.values())
        bank = torch.cat([F.pad(labels[i], (0, C - labels[i].shape[1])) for i in ctx])
        pred = (bank[idx] * wts[..., None]).sum(1)  # (N, C)
        out.append(pred.T.reshape(C, h, w).clone())
        if t in given:
            ids = given[t].reshape(N)
            C = max(C, int(ids.max()) + 1)
            pred = F.pad(pred, (0, C - pred.shape[1]))
            pred[ids > 0] = F.one_hot(ids[ids > 0], C).float()
            refs.append(t)
        else:
            queue.append(t)
        labels[t] = pred
    return out, labels


@pytest.mark.parametrize("backend", BACKENDS)
def test_objects_that_appear_later(backend):
    h, w, D, T = 5, 6, 16, 7
    feats = _video(T, h, w, D, seed=6)
    first = _ids(h, w, seed=6, ids=(0, 1))
    new2 = torch.zeros(h, w, dtype=torch.long)
    new2[1:3, 2:5] = 2
    new4 = torch.zeros(h, w, dtype=torch.long)
    new4[3:, :2] = 4  # id 3 never given
    given = {3: new2, 5: new4}  # frame 3 leaves the short-term queue: frame 6 sees frames 2 and 4
    cfg = get_preset("siammae-davis", topk=4, n_last=2, radius=2.5, prefill_queue=False).propagation
    dense, dense_labels = dense_with_references(feats, first, given, cfg)
    prop = Propagator(cfg, backend=backend)
    prop.reset(feats[0], first)
    out, t = [], 1
    for stop in (4, 6, T):  # chunks end at the annotated frames; the last one is a single frame (fused op)
        out.extend(prop.step(torch.stack(feats[t:stop])))
        t = stop
        if t - 1 in given:
            ref = prop.add_reference(given[t - 1])
            torch.testing.assert_close(ref, dense_labels[t - 1].T.reshape(-1, h, w), atol=1e-5, rtol=0)
            assert torch.all(ref[:, given[t - 1] > 0].max(0).values == 1)  # one-hot where the mask is given
    assert prop.num_classes == 5
    assert prop.state.n_ref == 3 and prop.state.n_queue == 3  # references 0, 3, 5; queue 2, 4, 6 (n + 1)
    for ours, ref in zip(out, dense, strict=True):
        torch.testing.assert_close(ours[: ref.shape[0]], ref, atol=1e-5, rtol=0)
        assert torch.all(ours[ref.shape[0] :] == 0)  # returned before the class existed


def test_memory_does_not_grow_with_the_video():
    h, w, D = 3, 4, 8
    g = torch.Generator().manual_seed(7)
    prop = Propagator(get_preset("dino", n_last=3, radius=1).propagation, backend="torch")
    prop.reset(torch.randn(h, w, D, generator=g), _ids(h, w))
    banks = set()
    for i in range(12):
        prop.step(torch.randn(2, h, w, D, generator=g))
        assert prop.state.n_queue == min(2 * i + 2, 4) and prop.state.n_ref == 1  # n + 1 at most
        assert prop.state.feats.shape == (1 + 4 + 2, h * w, D)  # references, n + 1 queued, the chunk
        banks.add(prop.state.feats.data_ptr())
    assert len(banks) == 1  # allocated once: a step neither grows nor reallocates the bank


def test_prefill_puts_n_copies_of_frame_0_in_the_queue():
    feat = torch.randn(3, 4, 8)
    prop = Propagator("siammae-davis", backend="torch")
    prop.reset(feat, _ids(3, 4))
    assert prop.state.n_queue == 20 and torch.equal(prop.state.feats[1:21], prop.state.feats[:1].expand(20, -1, -1))
    prop = Propagator("dino", backend="torch")
    prop.reset(feat, _ids(3, 4))
    assert prop.state.n_queue == 0


def test_prefilled_copies_are_scored_once_and_change_nothing():
    """The queue's copies of frame 0 are scored once (the step tells the top-k op which frames they are) while they
    last, through chunks of any size and a reference added among them: the same labels as scoring every copy."""
    h, w, D = 5, 7, 16
    feats = _video(12, h, w, D, seed=4)
    cfg = get_preset("siammae-davis", topk=3, n_last=4, radius=2.5).propagation
    mask = torch.zeros(h, w, dtype=torch.long)
    mask[1:3, 2:5] = 3  # an object that appears at frame 4

    def run(hinted: bool):
        prop = Propagator(cfg, backend="torch")
        prop.reset(feats[0], _ids(h, w))
        out, left, i = [], [], 1
        for size in (1, 3, 2, 4, 1):
            if not hinted:
                prop.state.n_copies = 0  # as if they were frames of their own
            out += list(prop.step(torch.stack(feats[i : i + size])))
            i += size
            if i == 5:
                out.append(prop.add_reference(mask))
            left.append(prop.state.n_copies)
        return out, left

    (hinted, left), (plain, _) = run(True), run(False)
    assert left == [4, 1, 0, 0, 0]  # 4 copies; a step of 3 pushes 3 out of the queue of n + 1 = 5, then the rest
    assert len(hinted) == len(plain) == 12 and all(torch.equal(a, b) for a, b in zip(hinted, plain, strict=True))


def test_misuse_is_reported():
    prop = Propagator("dino", backend="torch")
    with pytest.raises(InputError, match="reset"):
        prop.step(torch.zeros(1, 3, 4, 8))
    prop.reset(torch.randn(3, 4, 8), _ids(3, 4))
    with pytest.raises(InputError, match="step\\(\\) was not called"):
        prop.add_reference(_ids(3, 4))
    with pytest.raises(InputError, match="must be \\(T, 3, 4, D\\)"):
        prop.step(torch.zeros(1, 4, 3, 8))
    with pytest.raises(InputError, match="8-d"):
        prop.step(torch.zeros(1, 3, 4, 9))
    prop.step(torch.randn(1, 3, 4, 8))
    with pytest.raises(InputError, match="must be an \\(3, 4\\) integer id map, got \\(3, 4\\) torch.float32"):
        prop.add_reference(torch.zeros(3, 4))
    with pytest.raises(InputError, match="feature grid is 3x4"):
        prop.reset(torch.randn(3, 4, 8), _ids(4, 4))
    with pytest.raises(InputError, match="at least frame 0"):
        list(propagate_labels([], _ids(3, 4)))


# ------------------------------------------------------------------------------------------------------------
# Label conversions
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "src_hw, dst_hw",
    [
        ((480, 854), (60, 106)),
        ((480, 853), (60, 106)),
        ((480, 832), (480, 854)),
        ((1, 2), (3, 7)),
        ((37, 5), (4, 9)),
    ],
)
def test_mask_to_labels_is_pil_nearest(src_hw, dst_hw):
    rng = np.random.default_rng(sum(src_hw) + sum(dst_hw))
    ids = rng.integers(0, 256, src_hw).astype(np.uint8)
    pil = np.array(Image.fromarray(ids).resize((dst_hw[1], dst_hw[0]), Image.NEAREST))
    assert np.array_equal(mask_to_labels(ids, dst_hw).numpy(), pil)
    big = rng.integers(0, 70000, src_hw).astype(np.int32)  # ids beyond uint8, PIL mode I
    pil = np.asarray(Image.fromarray(big).resize((dst_hw[1], dst_hw[0]), Image.NEAREST))
    assert np.array_equal(mask_to_labels(torch.from_numpy(big), dst_hw).numpy(), pil)


def test_mask_to_labels_rejects_bad_maps():
    with pytest.raises(InputError, match="integer object ids"):
        mask_to_labels(np.zeros((4, 4), np.float32), (2, 2))
    with pytest.raises(InputError, match="negative ids"):
        mask_to_labels(-np.ones((4, 4), np.int64), (2, 2))
    with pytest.raises(InputError, match="\\(H, W\\) id map"):
        mask_to_labels(np.zeros((4, 4, 3), np.uint8), (2, 2))


def test_labels_to_mask_follows_both_output_rules():
    g = torch.Generator().manual_seed(8)
    soft = torch.rand(4, 5, 7, generator=g)
    soft[3] = 0  # a class with max 0 is left alone by norm_mask
    dino = get_preset("dino").propagation
    out = labels_to_mask(soft, (43, 61), 8, dino)
    assert out.dtype == torch.int64
    assert np.array_equal(out.numpy(), dino_output(soft.clone(), 8, (43, 61)))
    # CRW: bilinear to the image size, then argmax. Class 1 on the right patch of a 1x2 grid, 4 pixels wide:
    # pixel centres sample the source at -0.25 (clamped), 0.25, 0.75 and 1.25 (clamped) -> 0, 0.25, 0.75, 1.
    soft = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    out = labels_to_mask(soft, (1, 4), 2, get_preset("siammae-davis").propagation)
    assert out.tolist() == [[0, 0, 1, 1]]


def test_presets_follow_the_protocols():
    assert preset_names() == ("dino", "siammae-davis", "siammae-vip", "siammae-jhmdb", "crw")
    crw = get_preset("crw")  # CRW's README command: --topk 10 --videoLen 20 --radius 12 --temperature 0.05
    c = crw.propagation
    assert (c.topk, c.temperature, c.n_last, c.radius, c.neighbourhood) == (10, 0.05, 20, 12, "circle")
    assert (c.first_labels, c.upsample, c.keep_ties, c.norm_mask) == ("crw", "crw", False, False)
    assert c.prefill_queue and not c.restrict_reference and crw.inputs.size == (480, 480)
    dino = get_preset("dino").propagation
    assert (dino.topk, dino.temperature, dino.n_last, dino.radius, dino.neighbourhood) == (
        5,
        0.1,
        7,
        12,
        "square",
    )
    assert dino.restrict_reference and dino.norm_mask and dino.upsample == "patch" and not dino.prefill_queue
    davis = get_preset("siammae-davis").propagation
    assert (davis.topk, davis.temperature, davis.n_last, davis.radius) == (7, 0.7, 20, 20)
    assert davis.neighbourhood == "circle" and not davis.restrict_reference and davis.upsample == "image"
    vip = get_preset("siammae-vip").propagation
    assert (vip.topk, vip.n_last, vip.radius) == (10, 20, 8)  # SiamMAE Table 4b, VIP
    assert get_preset("siammae-jhmdb").propagation.topk == 7
    assert get_preset("dino", topk=7, radius=None).propagation == dataclasses.replace(dino, topk=7, radius=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        dino.topk = 3
    with pytest.raises(ValueError, match="valid presets: dino, siammae-davis"):
        get_preset("davis")
    with pytest.raises(ValueError, match="unknown propagation setting\\(s\\) k; valid settings: topk, .*, size"):
        get_preset("dino", k=3)
    with pytest.raises(ValueError, match="valid settings: topk, temperature"):
        list(propagate_labels([torch.zeros(2, 2, 4)] * 2, _ids(2, 2), dino, tau=0.1))
    assert dino.replace(n_last=3).n_last == 3 and dino.n_last == 7
    for bad in (dict(topk=0), dict(temperature=0), dict(n_last=-1), dict(radius=-1), dict(topk=2.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            get_preset("dino", **bad)
    with pytest.raises(ValueError, match="neighbourhood = 'diamond': valid: square, circle"):
        get_preset("dino", neighbourhood="diamond")


def test_one_preset_holds_constants_input_rule_and_task():
    """Each preset is one frozen value: its propagation constants, its input rule (PROTOCOL.md, "Features") and its
    task; each task has one default preset; overrides of either part go through Preset.replace."""
    dino = get_preset("dino")
    assert isinstance(dino, Preset) and dino.name == "dino" and dino.task == "masks" and dino.size is None
    assert dino.inputs == InputConfig(short_side=480, multiple=64, mean=IMAGENET_MEAN, std=DINO_STD, resize="uint8")
    crw = {name: get_preset(name) for name in ("siammae-davis", "siammae-vip", "siammae-jhmdb")}
    assert [p.task for p in crw.values()] == ["masks", "parts", "keypoints"]
    assert crw["siammae-davis"].inputs == InputConfig(size=(480, 880))  # CropMAE crop_size [480, 880]
    assert crw["siammae-jhmdb"].inputs == InputConfig(size=(320, 320))
    assert crw["siammae-vip"].inputs == InputConfig(short_side=None, long_side=880, multiple=64)
    assert all(p.inputs.std == IMAGENET_STD and p.inputs.resize == "float" for p in crw.values())
    assert [default_preset(t) for t in ("masks", "keypoints", "parts")] == [
        "siammae-davis",
        "siammae-jhmdb",
        "siammae-vip",
    ]
    assert get_preset() == get_preset(None) == crw["siammae-davis"]
    with pytest.raises(InputError, match="task 'faces' has no default preset"):
        default_preset("faces")

    # overrides: propagation constants and the size, validated, the registered preset unchanged
    small = dino.replace(topk=7, size="96")
    assert small.propagation == dataclasses.replace(dino.propagation, topk=7) and small.size == 96
    assert small.inputs == dataclasses.replace(dino.inputs, short_side=96)  # DINO's floor to 64 is kept
    assert get_preset("dino") == dino and get_preset(dino) is dino and dino.replace() is dino
    fixed = get_preset("dino", size="880x480")
    assert fixed.size == (480, 880) and fixed.inputs.size == (480, 880) and fixed.inputs.resize == "uint8"
    assert get_preset("siammae-vip", size=(880, 480)) == get_preset("siammae-vip", size="480x880")
    with pytest.raises(InputError, match="input size '480x' is not a short side"):
        dino.replace(size="480x")

    # the engine takes a name, a Preset or its constants alike
    assert Propagator(dino).config == Propagator("dino").config == dino.propagation
    assert Propagator().config == crw["siammae-davis"].propagation
    with pytest.raises(InputError, match="config must be a PropagationConfig, a Preset or a preset name, got int"):
        Propagator(3)

    # the record stored with results: every constant, the input rule, the size override
    record = get_preset("siammae-davis", topk=3, size="96").record()
    assert record == {
        "preset": "siammae-davis",
        "propagation": {**dataclasses.asdict(crw["siammae-davis"].propagation), "topk": 3},
        "size": 96,
        "input": {**dataclasses.asdict(crw["siammae-davis"].inputs), "short_side": 96, "size": None},
        "attention": "sdpa",  # the CRW presets: fused attention; dino: DINO's operation order on a CPU
    }
    assert get_preset("dino").attention == "auto"
    # the attention order is an override too (siammae-track / siammae-eval --attention), stored with the results
    fused = get_preset("dino", attention="sdpa", topk=3)
    assert (fused.attention, fused.propagation.topk, fused.record()["attention"]) == ("sdpa", 3, "sdpa")
    assert fused.inputs == dino.inputs and get_preset("dino").attention == "auto"
    with pytest.raises(InputError, match="preset attention must be one of .*got 'fast'"):
        dino.replace(attention="fast")
    assert get_preset("dino", size=(64, 96)).record()["size"] == [64, 96]  # JSON-ready

    # the registry refuses a second preset of the same name or a second default for a task
    with pytest.raises(ValueError, match="'dino' is already registered"):
        register_preset(dino)
    with pytest.raises(ValueError, match="task 'masks' already has a default preset, 'siammae-davis'"):
        register_preset(dataclasses.replace(dino, name="another"), default=True)
    assert "another" not in preset_names()
    with pytest.raises(InputError, match="task must be one of"):
        Preset("x", "faces", dino.propagation, dino.inputs)


# ------------------------------------------------------------------------------------------------------------
# Real frames and masks: objects that appear later (judo: id 1 at frame 0, id 2 at frame 5, id 3 at frame 8)
# ------------------------------------------------------------------------------------------------------------
def _patch_features(rgb: np.ndarray, patch: int) -> torch.Tensor:
    """Raw pixels of each patch, mean-removed: a crude but deterministic matching feature (h, w, 3 p^2)."""
    x = torch.tensor(rgb).float() / 255
    h, w = x.shape[0] // patch, x.shape[1] // patch
    x = x[: h * patch, : w * patch].reshape(h, patch, w, patch, 3).permute(0, 2, 1, 3, 4).reshape(h, w, -1)
    return x - x.mean(-1, keepdim=True)


def test_real_clip_with_objects_that_appear_later(shared_data):
    root = shared_data / "cutie"
    size, patch = (427, 240), 8  # frames at half resolution keep this fast on a CPU
    frames = [np.asarray(Image.open(root / f"images/judo/{i:05d}.jpg").convert("RGB").resize(size)) for i in range(10)]
    masks = {i: np.asarray(Image.open(root / f"masks/judo/{i:05d}.png")) for i in (0, 5, 8)}
    assert masks[5].shape == (480, 853)  # one mask is a pixel narrower than the frames
    feats = [_patch_features(f, patch) for f in frames]
    h, w = feats[0].shape[:2]
    labels = {i: mask_to_labels(m, (h, w)) for i, m in masks.items()}
    cfg = get_preset("dino").propagation
    prop = Propagator(cfg, backend="torch")
    prop.reset(feats[0], labels[0])
    for a, b in ((1, 6), (6, 9), (9, 10)):  # chunks end at the annotated frames 5 and 8
        soft = prop.step(torch.stack(feats[a:b]))
        if a - 1 in (5, 8):  # the frame after an annotation holds the new object, inside where it was given
            new_id = int(labels[a - 1].max())
            pred = labels_to_mask(soft[0], (480, 854), 2 * patch, cfg) == new_id
            given = np.asarray(Image.fromarray(masks[a - 1]).resize((854, 480), Image.NEAREST)) == new_id
            hit = (pred & torch.from_numpy(given)).sum()
            # measured with these crude features: precision 0.86 / 0.99, recall 0.54 / 0.59 (the queue frames,
            # from before the object was given, still vote background)
            assert hit / pred.sum() > 0.8 and hit / given.sum() > 0.4, f"object {new_id}: {hit} of {pred.sum()}"
        if b - 1 in (5, 8):
            ref = prop.add_reference(labels[b - 1])
            assert ref.shape == (int(labels[b - 1].max()) + 1, h, w)
    assert prop.num_classes == 4


# ------------------------------------------------------------------------------------------------------------
# The crw preset's rules (CRW data/vos.py and the read-out), hand-checked on tiny inputs
# ------------------------------------------------------------------------------------------------------------
def test_crw_first_labels_are_crws_bilinear_channels():
    """A 2x2 grey annotation [[0, 255], [0, 255]] at a 4x4 input: CRW's cv2.resize(..., cv2.INTER_NEAREST) puts the
    flag in ``dst``, so the resize is bilinear: columns 0, 64 (63.75), 191 (191.25), 255, four channels (nearest
    would give two). Each channel's one-hot map, bilinear to the 2x2 grid, averages column pairs: 0.5 each."""
    from siammae.propagation.labels import crw_first_labels, crw_palette_ids

    grey = np.array([[0, 255], [0, 255]], dtype=np.uint8)
    soft, colours = crw_first_labels(np.repeat(grey[..., None], 3, axis=2), (4, 4), (2, 2))
    assert colours[:, 0].tolist() == [0, 64, 191, 255] and (colours == colours[:, :1]).all()
    want = torch.tensor([[0.5, 0.0], [0.5, 0.0], [0.0, 0.5], [0.0, 0.5]])  # (C, w): the same in both rows
    assert torch.equal(soft, want[:, None, :].expand(4, 2, 2))
    # convert_davis: a colour's index in CRW's palette; greys >= 22 are entries of their own, grey 128 is entry 7
    rgb = np.array([[0, 0, 0], [64, 64, 64], [191, 191, 191], [128, 128, 128], [191, 0, 0], [5, 5, 5]], np.uint8)
    assert crw_palette_ids(rgb).tolist() == [0, 64, 191, 7, 9, 0]


def test_crw_read_out_goes_through_the_input_size_then_opencv_nearest():
    """Soft labels ch1 = [0, 1] on a 1x2 grid, input 2x4: bilinear gives ch1 [0, .25, .75, 1], argmax [0, 0, 1, 1];
    OpenCV's nearest to width 5 samples columns floor(x * 0.8) = 0, 0, 1, 2, 3 -> [0, 0, 0, 1, 1] (PIL's rule,
    pixel centres, would give [0, 0, 1, 1, 1])."""
    from siammae.propagation.labels import crw_read_out

    soft = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (C=2, h=1, w=2)
    assert crw_read_out(soft, (2, 4), (2, 4)).tolist() == [[0, 0, 1, 1]] * 2
    assert crw_read_out(soft, (2, 4), (2, 5)).tolist() == [[0, 0, 0, 1, 1]] * 2
    cfg = get_preset("crw").propagation
    assert labels_to_mask(soft, (2, 5), 16, cfg, input_size=(2, 4)).tolist() == [[0, 0, 0, 1, 1]] * 2
    with pytest.raises(InputError, match="input_size"):
        labels_to_mask(soft, (2, 5), 16, cfg)


def test_features_that_are_not_finite_stop_the_run_with_the_frame_number():
    """A checkpoint with NaN weights gives NaN features: every later frame would be background and the run would
    say complete. The engine stops at the first bad frame instead, naming it."""
    feats = _video(6, 3, 4, 8, seed=5)
    feats[4] = feats[4].clone()
    feats[4][1, 2, 3] = float("nan")
    with pytest.raises(InputError, match=r"^frame 4: the encoder's features are not finite"):
        list(propagate_labels(feats, _ids(3, 4), "dino", chunk_size=2))
    bad0 = [torch.full((3, 4, 8), float("inf"))] + feats[1:]
    with pytest.raises(InputError, match=r"^frame 0: "):
        list(propagate_labels(bad0, _ids(3, 4), "dino"))
