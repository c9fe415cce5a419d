"""Attention maps: shapes, normalisation, equality with timm's own attention and with a direct computation from the
last block's weights, head selection, rendering, streaming, and the ``siammae-attn`` command."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from siammae.attention.maps import (
    attention_maps,
    colormap_lut,
    grid_shape,
    heatmaps,
    iter_attention,
    overlay,
    resolve_heads,
)
from siammae.cli.attn import main
from siammae.data.transforms import normalize
from siammae.data.video import Frame, open_video, read_image, write_video
from siammae.errors import InputError
from siammae.model.checkpoint import save_checkpoint
from siammae.model.registry import create_model
from siammae.propagation.config import get_preset
from siammae.propagation.driver import Tracker
from siammae.propagation.inputs import resize_frame, to_batch


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return create_model("tiny", **overrides).eval()


def _frames(B=2, H=40, W=56, seed=0):
    return torch.randn(B, 3, H, W, generator=torch.Generator().manual_seed(seed))


def _direct_maps(encoder, x):
    """The [CLS] row of the last block's attention over the patch keys, written out from its weights."""
    tokens = encoder.prepare_tokens(x)
    for blk in encoder.blocks[:-1]:
        tokens = blk(tokens)
    last = encoder.blocks[-1]
    y = F.layer_norm(tokens, (encoder.embed_dim,), last.norm1.weight, last.norm1.bias, eps=1e-6)
    D, nh = encoder.embed_dim, encoder.num_heads
    W, b = last.attn.qkv.weight, last.attn.qkv.bias  # rows: [q; k; v], each D wide
    q = y[:, 0] @ W[:D].T + b[:D]  # (B, D): the [CLS] query
    k = y[:, 1:] @ W[D : 2 * D].T + b[D : 2 * D]  # (B, L, D): the patch keys
    B, L = k.shape[:2]
    q = q.view(B, nh, D // nh)
    k = k.view(B, L, nh, D // nh)
    logits = torch.einsum("bhc,blhc->bhl", q, k) / (D // nh) ** 0.5
    h, w = x.shape[-2] // encoder.patch_size, x.shape[-1] // encoder.patch_size
    return logits.softmax(-1).view(B, nh, h, w)


# ------------------------------------------------------------------------------------------------------ maps
@pytest.mark.parametrize(
    "overrides, size",
    [({}, (40, 56)), (dict(num_heads=4, depth=3), (24, 72)), (dict(pos_embed="learned"), (64, 64))],
)
def test_maps_shape_and_sum_to_one_over_patches(overrides, size):
    model = _model(**overrides)
    maps = attention_maps(model, _frames(3, *size))
    h, w = size[0] // 8, size[1] // 8
    assert maps.shape == (3, model.config.num_heads, h, w) and maps.dtype == torch.float32
    assert (maps >= 0).all()
    torch.testing.assert_close(maps.sum(dim=(-2, -1)), torch.ones(3, model.config.num_heads), atol=1e-6, rtol=0)
    assert maps.std() > 0  # not uniform: the maps depend on the image


def test_maps_equal_a_direct_computation_from_the_qkv_weights():
    model = _model(depth=3, num_heads=4)
    x = _frames(2, 32, 48)
    with torch.no_grad():
        expected = _direct_maps(model.encoder, x)
    torch.testing.assert_close(attention_maps(model, x), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(attention_maps(model.encoder, x), expected, atol=1e-6, rtol=1e-5)


def test_maps_equal_timm_attention_row_renormalised_over_patches():
    """timm's unfused path forms the full (B, nh, N, N) softmax; our map is its [CLS] row over the patches,
    renormalised (DINO's visualize_attention shows the same row before renormalising)."""
    model = _model(num_heads=4)
    x = _frames(2, 48, 40)
    last = model.encoder.blocks[-1].attn
    last.fused_attn = False
    seen = []
    handle = last.attn_drop.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    try:
        with torch.no_grad():
            model.encoder.features(x, attention="sdpa")  # timm's Block, whose softmax the hook sees
    finally:
        handle.remove()
    full = torch.cat(seen)  # (B, nh, 1 + L, 1 + L): on a CPU the encoder runs one frame a call
    row = full[:, :, 0, 1:]  # (B, nh, L): [CLS] query, patch keys
    assert (full[:, :, 0, 0] > 0).all()  # the [CLS] key takes some mass, which renormalising removes
    expected = (row / row.sum(-1, keepdim=True)).view(2, 4, 6, 5)
    torch.testing.assert_close(attention_maps(model, x), expected, atol=1e-6, rtol=1e-5)


def test_maps_under_bf16_autocast_stay_fp32_distributions():
    model = _model(num_heads=4)
    x = _frames(2, 32, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = attention_maps(model, x)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low.sum(dim=(-2, -1)), torch.ones(2, 4), atol=1e-6, rtol=0)
    full = attention_maps(model, x)
    assert (low - full).abs().max() < 0.05 * full.max()


def test_head_selection_order_and_mean():
    model = _model(num_heads=4)
    x = _frames(2, 32, 32)
    every = attention_maps(model, x)
    assert torch.equal(attention_maps(model, x, heads="all"), every)
    torch.testing.assert_close(attention_maps(model, x, heads=[3, 0]), every[:, [3, 0]])
    torch.testing.assert_close(attention_maps(model, x, heads="2,1"), every[:, [2, 1]])
    mean = attention_maps(model, x, heads="mean")
    assert mean.shape == (2, 1, 4, 4)
    torch.testing.assert_close(mean, every.mean(1, keepdim=True))
    torch.testing.assert_close(mean.sum(dim=(-2, -1)), torch.ones(2, 1))


@pytest.mark.parametrize(
    "spec, match",
    [
        ("x", "not valid"),
        ("0,,1", "not valid"),
        ("2", "out of range: the model has 2 heads"),
        ([-1], "out of range"),
        ([0, 0], "selected twice"),
        ([], "no heads"),
        ([0.5], "not an integer"),
    ],
)
def test_bad_head_specs_are_input_errors(spec, match):
    with pytest.raises(InputError, match=match):
        resolve_heads(spec, 2)


def test_bad_frames_are_input_errors():
    model = _model()
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        attention_maps(model, torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="not divisible by the patch size 8"):
        attention_maps(model, torch.randn(1, 3, 30, 32))
    with pytest.raises(TypeError, match="SiamMAE or ViTEncoder"):
        attention_maps(torch.nn.Linear(2, 2), torch.randn(1, 3, 32, 32))


# ------------------------------------------------------------------------------------------------- rendering
def test_colormaps_match_matplotlib_and_rise_in_lightness():
    # matplotlib's _cm_listed tables at 0, 0.5 (entry 128) and 1; the polynomial fits are within a few levels
    reference = {
        "inferno": [(0.001462, 0.000466, 0.013866), (0.729909, 0.212759, 0.333861), (0.988362, 0.998364, 0.644924)],
        "viridis": [(0.267004, 0.004874, 0.329415), (0.127568, 0.566949, 0.550556), (0.993248, 0.906157, 0.143936)],
    }
    for name, rows in reference.items():
        lut = colormap_lut(name).astype(float)
        assert lut.shape == (256, 3)
        np.testing.assert_allclose(lut[[0, 128, 255]], np.asarray(rows) * 255, atol=4.5)
        luma = lut @ np.array([0.2126, 0.7152, 0.0722])
        assert (np.diff(luma) > -0.6).all() and luma[-1] - luma[0] > 150  # perceptually ordered, dark to light
    with pytest.raises(InputError, match="colormap 'jet'"):
        colormap_lut("jet")


def test_heatmap_peak_is_the_top_of_the_colormap():
    maps = torch.zeros(2, 3, 4)
    maps[0, 1, 2] = 1.0  # a single patch
    maps[1] = 1.0 / 12  # uniform
    heat = heatmaps(maps, (24, 32), "inferno").numpy()  # patch size 8
    lut = colormap_lut("inferno")
    assert heat.shape == (2, 24, 32, 3) and heat.dtype == np.uint8
    np.testing.assert_array_equal(heat[0, 11:13, 19:21], np.broadcast_to(lut[255], (2, 2, 3)))  # patch (1, 2)
    np.testing.assert_array_equal(heat[0, 0, 0], lut[0])  # far from it
    assert (heat[1] == lut[255]).all()  # a uniform map is at its own peak everywhere


def test_overlay_blends_and_tiles():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    maps = torch.rand(3, 2, 3)
    heat = heatmaps(maps, (16, 24)).numpy()
    out = overlay(rgb, maps, alpha=1.0)
    assert grid_shape(3) == (1, 3) and out.shape == (16, 72, 3)
    np.testing.assert_array_equal(out[:, 24:48], heat[1])
    np.testing.assert_array_equal(overlay(rgb, maps[:1], alpha=0.0), rgb)
    half = overlay(rgb, maps[:1], alpha=0.5).astype(int)
    assert np.abs(half - (rgb.astype(int) + heat[0]) / 2).max() <= 0.5 + 1e-9
    big = np.repeat(np.repeat(rgb, 4, axis=0), 4, axis=1)  # (64, 96, 3)
    plain, labelled = overlay(big, maps, alpha=1.0), overlay(big, maps, names=["h0", "h1", "h2"], alpha=1.0)
    assert (labelled[:24] != plain[:24]).any()  # a label in each tile's top-left corner ...
    np.testing.assert_array_equal(labelled[24:], plain[24:])  # ... and nowhere else
    assert [grid_shape(n) for n in (1, 2, 4, 6, 12)] == [(1, 1), (1, 2), (2, 2), (2, 3), (3, 4)]
    with pytest.raises(InputError, match="alpha 1.5"):
        overlay(rgb, maps, alpha=1.5)


def test_iter_attention_streams_one_batch_at_a_time():
    model = _model()
    pulled = []

    def source():
        rng = np.random.default_rng(0)
        for i in range(7):
            pulled.append(i)
            yield Frame(i, f"{i:05d}", rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))

    stream = iter_attention(model, source(), heads="mean", size=24, batch_size=3, labels=False)
    first, rgb = next(stream)
    assert first.index == 0 and len(pulled) == 3  # one batch decoded, not the video
    assert rgb.shape == (24, 32, 3)  # 40x30 at short side 24, the long side floored to the patch size 8
    rest = list(stream)
    assert [f.index for f, _ in rest] == list(range(1, 7)) and len(pulled) == 7


# ----------------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return str(save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", _model(seed=1)))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """6 frames 48x64: a bright square moving right over a dark textured background."""
    rng = np.random.default_rng(0)
    frames = []
    for t in range(6):
        f = rng.integers(0, 60, (48, 64, 3), dtype=np.uint8)
        f[16:32, 8 + 4 * t : 24 + 4 * t] = 230
        frames.append(f)
    path = tmp_path_factory.mktemp("video") / "square.mp4"
    write_video(path, frames, fps=10)
    return str(path)


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _expected_tiles(model, rgb, size, heads, alpha=1.0, preset=None):
    """What the command should draw for one frame, from the Python API: the preset's input rule, then the maps."""
    rule = get_preset(preset, size=size).inputs
    x = to_batch([resize_frame(rgb, rule.frame_size(*rgb.shape[:2], model.patch_size), rule.resize)], "cpu")
    shown = (x[0].permute(1, 2, 0) * 255).round().byte().numpy()
    return overlay(shown, attention_maps(model, normalize(x, rule.mean, rule.std), heads)[0], alpha=alpha)


@pytest.mark.parametrize(("preset", "size"), [("dino", 64), ("siammae-davis", "48x80"), ("siammae-jhmdb", None)])
def test_attention_sees_the_trackers_encoder_input(preset, size):
    """siammae-attn and siammae-track encode a frame alike for the same preset and size: the tensor that reaches
    the encoder is the same, bit for bit (uint8 resize and DINO's std for dino, float resize for siammae-*)."""
    model = _model()
    rgb = np.random.default_rng(5).integers(0, 256, (75, 131, 3), dtype=np.uint8)  # sizes the presets must resize
    seen = {}
    features, prepare = model.features, model.encoder.prepare_tokens

    def spy(name, fn):
        def wrapped(x, *args, **kwargs):
            seen[name] = x.detach().clone()
            return fn(x, *args, **kwargs)

        return wrapped

    model.features = spy("track", features)
    model.encoder.prepare_tokens = spy("attn", prepare)
    try:
        list(Tracker(model, preset, device="cpu", size=size).masks([rgb], np.ones(rgb.shape[:2], np.uint8)))
        seen.pop("attn")  # the driver's own call of the encoder
        list(iter_attention(model, [Frame(0, "f", rgb)], heads="mean", size=size, preset=preset))
    finally:
        del model.features, model.encoder.prepare_tokens
    rule = get_preset(preset, size=size).inputs
    assert seen["attn"].shape[-2:] == rule.frame_size(75, 131, 8) and seen["attn"].dtype == torch.float32
    assert torch.equal(seen["attn"], seen["track"])


def _assert_same_picture(got, expected):
    """Equal up to a neighbouring colormap entry here and there (batched float sums differ in the last bit)."""
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert got.shape == expected.shape and diff.max() <= 8 and (diff > 0).mean() < 0.01


def test_cli_video_to_mp4_grid_of_heads(video, ckpt, tmp_path):
    out = tmp_path / "attn.mp4"
    res = _run(video, "--ckpt", ckpt, "--size", 48, "--out", out)
    assert res.exit_code == 0, res.output
    src = open_video(out)
    assert (src.width, src.height) == (2 * 64, 48)  # two heads side by side at 64x48
    assert sum(1 for _ in src) == 6
    assert not list(tmp_path.glob(".*tmp*"))


def test_cli_video_to_png_folder_equals_the_api(video, ckpt, tmp_path):
    from siammae.model.checkpoint import load_model

    model = load_model(ckpt)
    out = tmp_path / "maps"
    res = _run(video, "--ckpt", ckpt, "--size", 32, "--heads", "1", "--alpha", 1, "--no-labels", "--out", out, "-q")
    assert res.exit_code == 0, res.output
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == [f"{i:05d}.png" for i in range(6)]
    for frame, f in zip(open_video(video), files, strict=True):
        got = read_image(f)
        assert got.shape == (32, 40, 3)  # 48x64 at short side 32
        _assert_same_picture(got, _expected_tiles(model, frame.rgb, 32, [1]))


def test_cli_image_mean_of_heads_equals_the_api(ckpt, tmp_path):
    from siammae.model.checkpoint import load_model

    rgb = np.random.default_rng(3).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    image = tmp_path / "photo.png"
    Image.fromarray(rgb).save(image)
    out = tmp_path / "photo_attn.png"
    res = _run(image, "--ckpt", ckpt, "--size", 40, "--heads", "mean", "--alpha", 1, "--no-labels", "--out", out)
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.output
    expected = _expected_tiles(load_model(ckpt), rgb, 40, "mean")
    assert expected.shape == (40, 56, 3)
    _assert_same_picture(read_image(out), expected)


def test_cli_preset_and_size_as_siammae_track(video, ckpt, tmp_path):
    """--preset / --size choose the frame size as siammae-track does: dino floors the long side to 64, a pair is
    a fixed size; the picture is the API's for that preset."""
    from siammae.model.checkpoint import load_model

    model = load_model(ckpt)
    rgb = next(iter(open_video(video))).rgb
    for args, preset, size, hw in (
        (["--preset", "dino", "--size", 32], "dino", 32, (32, 64)),  # 64x48 -> 42 wide, floored to 64 (at least one)
        (["--size", 32], None, 32, (32, 40)),  # the default preset: the long side floored to the patch size
        (["--size", "32x48"], None, "32x48", (32, 48)),
    ):
        out = tmp_path / f"{preset}-{size}"
        res = _run(video, "--ckpt", ckpt, *args, "--heads", "0", "--alpha", 1, "--no-labels", "--out", out, "-q")
        assert res.exit_code == 0, res.output
        got = read_image(out / "00000.png")
        assert got.shape[:2] == hw
        _assert_same_picture(got, _expected_tiles(model, rgb, size, [0], preset=preset))
    res = _run(video, "--ckpt", ckpt, "--size", "32x", "--out", tmp_path / "bad")
    assert res.exit_code == 2 and "'32x' is not a size" in res.stderr
    res = _run(video, "--ckpt", ckpt, "--preset", "fast", "--out", tmp_path / "bad")
    assert res.exit_code == 2 and "'fast' is not one of 'dino', 'siammae-davis'" in res.stderr


def test_cli_default_output_name(ckpt, tmp_path, monkeypatch, shared_data):
    monkeypatch.chdir(tmp_path)
    res = _run(shared_data / "cutie/images/bike", "--ckpt", ckpt, "--size", 64, "-q")
    assert res.exit_code == 0, res.output
    src = open_video(tmp_path / "bike_attn.mp4")
    assert sum(1 for _ in src) == 4
    assert (src.width, src.height) == (2 * 112, 64)  # bmx-trees 854x480 -> 112x64 (patch 8), two heads


def test_cli_real_video(ckpt, tmp_path, shared_data):
    out = tmp_path / "example_attn.mp4"
    args = ["--ckpt", ckpt, "--size", 32, "--heads", "0", "--batch-size", 16, "--out", out, "-q"]
    res = _run(shared_data / "cutie/example.mp4", *args)
    assert res.exit_code == 0, res.output
    src = open_video(out)
    assert (src.width, src.height) == (40, 32) and sum(1 for _ in src) == 117  # 640x480 clip, 117 frames
    assert src.fps == pytest.approx(25.0)


def _bad_inputs(tmp_path, video):
    (tmp_path / "notes.txt").write_text("not a video")
    (tmp_path / "garbage.mp4").write_bytes(b"\x00garbage" * 100)
    data = Path(video).read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, f in enumerate(open_video(video)):
        Image.fromarray(f.rgb).save(frames / f"{i:05d}.png")
    (frames / "00004.png").write_bytes(b"broken")  # decoding fails part-way through the folder
    (tmp_path / "file").write_text("a file where a folder is needed")
    return [
        ("missing", [tmp_path / "nope.mp4"], "no such file"),
        ("not-a-video", [tmp_path / "notes.txt"], "not a video file or frame folder"),
        ("garbage", [tmp_path / "garbage.mp4"], "cannot open video"),
        ("truncated", [tmp_path / "truncated.mp4"], "cannot open video"),
        ("broken-image", [tmp_path / "broken.jpg", "--out", tmp_path / "o.png"], "cannot decode image"),
        ("broken-frame", [frames], "00004.png: cannot decode image"),
        ("heads-spec", [video, "--heads", "0;1"], "heads '0;1' is not valid"),
        ("head-range", [video, "--heads", "0,5"], "head 5 is out of range: the model has 2 heads"),
        ("unwritable", [video, "--out", tmp_path / "file" / "o.mp4"], "cannot write"),
        ("video-to-png", [video, "--out", tmp_path / "o.png"], "must be a video file"),
        ("image-to-mp4", [tmp_path / "broken.jpg", "--out", tmp_path / "o.mp4"], "must be an image file"),
        ("missing-ckpt", [video, "--ckpt", tmp_path / "none.pt"], "none.pt: no such file"),
        ("size", [video, "--size", 4], "smaller than the patch size 8"),
        ("alpha", [video, "--alpha", 2], "alpha 2.0 is not in [0, 1]"),
        ("fp16-on-cpu", [video, "--dtype", "fp16", "--device", "cpu"], "fp16 needs a CUDA device"),
    ]


def test_cli_bad_inputs_one_line_error_exit_2(video, ckpt, tmp_path):
    before = set()
    for name, args, match in _bad_inputs(tmp_path, video):
        if "--ckpt" not in args:
            args = [*args, "--ckpt", ckpt]
        if "--out" not in args:
            args = [*args, "--out", tmp_path / f"{name}.mp4"]
        if "--size" not in args:
            args = [*args, "--size", 32]
        before = set(tmp_path.rglob("*"))
        res = _run(*args, "-q")
        assert res.exit_code == 2, (name, res.output)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, res.stderr)
        assert match in lines[0], (name, lines[0])
        assert "Traceback" not in res.output
        assert set(tmp_path.rglob("*")) == before, name  # no output, no temp file left behind


def test_cli_error_after_the_progress_bar_is_on_its_own_line(ckpt, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(frames / f"{i:05d}.png")
    (frames / "00003.png").write_bytes(b"broken")
    res = _run(frames, "--ckpt", ckpt, "--size", 24, "--batch-size", 1, "--out", tmp_path / "o.mp4")
    assert res.exit_code == 2
    assert res.stderr.splitlines()[-1].startswith("error: ") and "00003.png" in res.stderr.splitlines()[-1]
    assert "frame" in res.stderr  # the bar was shown
    assert not (tmp_path / "o.mp4").exists() and not list(tmp_path.glob(".*tmp*"))
