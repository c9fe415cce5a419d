"""The one propagation driver: ``siammae-track`` and ``siammae-eval`` give the same masks (PyTorch and ONNX
encoders); each preset's input is its reference script's, bit for bit; and the ``dino`` preset end to end against
DINO's ``eval_video_segmentation.py`` written out here (its ``read_frame``, ``extract_feature`` and propagation)."""

import shutil
import warnings

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import cropmae_load, davis_2016_layout, dino_read_frame, dino_script, dino_vit_features
from PIL import Image

from siammae.cli.eval import main as eval_main
from siammae.cli.track import main as track_main
from siammae.data.transforms import normalize
from siammae.errors import InputError
from siammae.evaluation.benchmark import load_runner
from siammae.export import export_onnx, load_encoder
from siammae.model.checkpoint import save_checkpoint
from siammae.model.encoder import ViTEncoder
from siammae.model.registry import create_model, model_config
from siammae.propagation.config import get_preset
from siammae.propagation.driver import Tracker
from siammae.propagation.inputs import InputConfig, chunks, parse_size


def _seq(shared_data, name="blackswan"):
    frames = sorted((shared_data / f"davis2016/JPEGImages/480p/{name}").glob("*.jpg"))
    return frames, shared_data / f"davis2016/Annotations/480p/{name}/00000.png"


def _masks(folder):
    return {p.stem: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def _encoder_inputs(model, driver_kwargs, frames, mask):
    """The tensors that reach ``model.features`` when a Tracker runs each of ``frames`` as frame 0 (encoded as every
    frame is, without the propagation, which would only cost time here)."""
    seen = []
    features = model.features

    def spy(x, **kw):
        seen.append(x.detach().clone())
        return features(x, **kw)

    model.features = spy
    try:
        driver = Tracker(model, device="cpu", **driver_kwargs)
        for frame in frames:
            list(driver.masks([frame], mask))
    finally:
        del model.features
    return torch.cat(seen)


def test_pil_decodes_davis_jpegs_as_cv2_imread(shared_data):
    """Frame folders decode with PIL; DINO and CRW use cv2.imread. On the DAVIS JPEGs they agree exactly (so the
    dino preset needs no second decoder)."""
    for name in ("blackswan", "car-shadow", "soapbox"):
        for path in _seq(shared_data, name)[0][::7]:
            np.testing.assert_array_equal(
                np.asarray(Image.open(path).convert("RGB")), cv2.imread(str(path))[:, :, ::-1]
            )


def test_dino_input_is_dinos_read_frame(fixture_data):
    frames, mask = _seq(fixture_data)
    model = create_model("tiny")
    got = _encoder_inputs(model, dict(preset="dino"), frames[:3], mask)
    assert got.shape == (3, 3, 480, 832)
    for x, path in zip(got, frames[:3], strict=True):
        assert torch.equal(x, dino_read_frame(path))  # bit for bit
    small = _encoder_inputs(model, dict(preset="dino", size=160), frames[:2], mask)
    assert small.shape == (2, 3, 160, 256) and torch.equal(small[1], dino_read_frame(frames[1], 160))


@pytest.mark.parametrize(("preset", "hw"), [("siammae-davis", (480, 880)), ("siammae-vip", (448, 880))])
def test_crw_style_input_is_cropmaes_loader(fixture_data, preset, hw):
    frames, mask = _seq(fixture_data)
    got = _encoder_inputs(create_model("tiny"), dict(preset=preset), frames[:2], mask)
    assert got.shape[-2:] == hw
    for x, path in zip(got, frames[:2], strict=True):
        assert torch.equal(x, cropmae_load(path, *hw))


def test_input_rules():
    vip = get_preset("siammae-vip").inputs
    assert vip.frame_size(480, 854, 16) == (448, 880)  # CropMAE: int(480 * 880 / 854) = 494, floored to 64
    assert get_preset("dino").inputs.frame_size(480, 854, 14) == (476, 826)  # floored to 64, then to the patch size
    assert get_preset("dino", size=32).inputs.frame_size(480, 854, 8) == (32, 64)  # at least one multiple of 64
    assert parse_size(96) == parse_size("96") == parse_size(" 96 ") == 96  # the one parser of the size grammar
    assert parse_size((880, 480)) == parse_size("480x880") == parse_size("880X480") == (480, 880)  # (short, long)
    assert vip.with_size(96) == vip.with_size("96") == InputConfig(short_side=96, multiple=64)
    fixed = vip.with_size("480x880")
    assert fixed.size == (480, 880) and fixed.frame_size(854, 480, 16) == (880, 480)  # transposed for portrait
    for bad in ("0", "1x2x3", "x", "480x0", True, 2.5, (480,), None):
        with pytest.raises(InputError, match="is not a short side"):
            parse_size(bad)
    with pytest.raises(InputError, match="resize must be one of"):
        InputConfig(resize="bicubic")
    with pytest.raises(InputError, match="std must be > 0"):
        InputConfig(std=(0.2, 0.0, 0.2))
    with pytest.raises(InputError, match="size must be a \\(short, long\\) pair"):
        InputConfig(size=(880, 480))
    with pytest.raises(InputError, match="is not a multiple of the patch size 14"):
        get_preset("siammae-davis").inputs.frame_size(480, 854, 14)


def test_one_chunking_loop():
    assert list(chunks(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunks(range(7), 3, ends=lambda i: i == 1)) == [[0, 1], [2, 3, 4], [5, 6]]

    def broken():
        yield from (0, 1)
        raise KeyboardInterrupt

    got = []
    with pytest.raises(KeyboardInterrupt):
        for batch in chunks(broken(), 3):
            got.append(batch)
    assert got == [[0, 1]]  # the items before the failure come out first
    with pytest.raises(InputError, match="chunk size"):
        list(chunks([], 0))
    assert list(chunks(range(7), 3, first=2)) == [[0, 1], [2, 3, 4], [5, 6]]


def test_the_first_result_comes_after_two_frames_not_a_chunk():
    """A progress bar's first update: frame 1 is yielded once frames 0 and 1 are encoded, whatever --chunk is."""
    from siammae.data.synthetic import make_synthetic_clip
    from siammae.propagation.driver import Tracker

    torch.manual_seed(0)
    frames, masks = make_synthetic_clip(12, (32, 48), seed=1)
    tracker = Tracker(create_model("tiny"), "siammae-davis", device="cpu", size=32, chunk=8, prefetch=False)
    seen = []

    class Counting:  # the tracker's encoder, counting the frames it is given
        def __init__(self, encoder):
            self.encoder = encoder

        def __getattr__(self, name):
            return getattr(self.encoder, name)

        def __call__(self, x):
            seen.append(x.shape[0])
            return self.encoder(x)

    tracker.encoder = Counting(tracker.encoder)
    stream = tracker.masks(list(frames), masks[0])
    assert [i for i, _ in (next(stream), next(stream))] == [0, 1] and sum(seen) == 2
    rest = [i for i, _ in stream]
    assert rest == list(range(2, 12)) and seen == [2, 8, 2]


# ------------------------------------------------------------------------------------------------------------
# siammae-track and siammae-eval: the same masks
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", create_model("tiny"))
    return ckpt, export_onnx(ckpt, size=96, max_batch=4)  # 854x480 at short side 96 -> 168x96


@pytest.mark.parametrize(("weights", "size"), [("torch", "96"), ("onnx", "96"), ("torch", "96x176")])
def test_track_and_eval_give_the_same_masks(fixture_data, tmp_path, tiny, weights, size):
    frames, mask = _seq(fixture_data)
    n = 6
    folder = tmp_path / "frames"
    folder.mkdir()
    for f in frames[:n]:
        shutil.copy(f, folder / f.name)
    ckpt, onnx_path = tiny
    model = ["--ckpt", str(ckpt)] if weights == "torch" else ["--encoder", str(onnx_path)]
    common = [*model, "--size", size, "--device", "cpu"]
    r = CliRunner().invoke(track_main, [str(folder), "--mask", str(mask), *common, "--out", str(tmp_path / "track")])
    assert r.exit_code == 0, (r.output, r.exception)
    root = davis_2016_layout(fixture_data, tmp_path / "DAVIS", ["blackswan"])
    args = ["davis", "--root", str(root), "--year", "2016", "--max-frames", str(n), "--out", str(tmp_path / "eval")]
    r = CliRunner().invoke(eval_main, [*args, *common])
    assert r.exit_code == 0, (r.output, r.exception)
    tracked, evaluated = _masks(tmp_path / "track"), _masks(tmp_path / "eval/predictions/blackswan")
    assert list(tracked) == list(evaluated) == [f"{i:05d}" for i in range(n)]
    for name in list(tracked)[1:]:
        np.testing.assert_array_equal(tracked[name], evaluated[name], err_msg=name)
        assert 0 < (tracked[name] == 1).sum() < tracked[name].size  # the swan is tracked, not lost or everywhere


def test_an_exported_encoder_of_another_normalisation_warns(tiny):
    """The graph carries its mean / std; a preset that normalises otherwise (dino: std 0.228) says how to export."""
    _, onnx_path = tiny  # exported for the default preset: ImageNet mean / std
    with pytest.warns(UserWarning, match=r"std \(0\.229, 0\.224, 0\.225\) but preset dino expects .*--preset dino"):
        Tracker(load_encoder(onnx_path), "dino", size=96)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Tracker(load_encoder(onnx_path), size=96)  # the preset it was exported for: no warning


def test_track_and_eval_default_to_the_presets_input(tiny):
    """Without --size both commands leave the size to the preset, so they encode a DAVIS frame alike by default:
    at the preset's size (480x832 for dino, DINO's read_frame; 480x880 for siammae-davis) to the same tensor."""
    from siammae.tracking.job import load_tracker

    track_args = ["v.mp4", "--mask", "m.png", "--ckpt", "m.pt"]
    track_size = track_main.make_context("siammae", track_args).params["size"]
    eval_size = eval_main.commands["davis"].make_context("siammae", ["--root", "D", "--ckpt", "m.pt"]).params["size"]
    ckpt, _ = tiny
    rgb = np.random.default_rng(0).integers(0, 256, (480, 854, 3), dtype=np.uint8)
    for preset, want in (("dino", (480, 832)), ("siammae-davis", (480, 880))):
        runner, _ = load_runner(ckpt, "davis", preset, size=eval_size, device="cpu")  # what siammae-eval builds
        tracker = load_tracker(ckpt, preset=preset, size=track_size, device="cpu", progress=False)  # siammae-track
        assert runner.tracker.frame_size(480, 854) == tracker.frame_size(480, 854) == want
        (_, by_eval), (_, by_track) = next(runner.tracker.inputs_of([rgb])), next(tracker.inputs_of([rgb]))
        assert by_eval.shape[:2] == want and np.array_equal(by_eval, by_track)


# ------------------------------------------------------------------------------------------------------------
# The dino preset end to end against DINO's script (random ViT-S/16 in DINO's parameter names)
# ------------------------------------------------------------------------------------------------------------
def _dino_format_vit(depth: int = 12) -> ViTEncoder:
    """A random ViT-S/16 as DINO's weights load: a learned position table (resized bicubically, as DINO does),
    DINO's initialisation scale for it (trunc normal, std 0.02), seed 0."""
    torch.manual_seed(0)
    model = ViTEncoder(model_config("vits16", depth=depth, pos_embed="learned")).eval()
    torch.nn.init.trunc_normal_(model.pos_embed, std=0.02)
    return model


def test_dino_preset_matches_dinos_script_end_to_end(fixture_data):
    """The same claim on the 6 blackswan frames of tests/fixtures (runs in every clone): every pixel equal."""
    frames, mask = _seq(fixture_data)
    assert len(frames) == 6  # tests/fixtures: frame 0 and its mask, then 5 propagated frames
    model = _dino_format_vit(depth=2)
    theirs = dino_script(model, frames, mask, 240, 16)  # short side 240: 427 -> 384 wide, a 15 x 24 grid
    ours = [m for i, m in Tracker(model, "dino", device="cpu", size=240).masks(frames, mask) if i > 0]
    for t, (a, b) in enumerate(zip(theirs, ours, strict=True), 1):
        np.testing.assert_array_equal(b, a, err_msg=f"frame {t}")  # every pixel: the same input, the same masks
    assert all(0 < m.sum() < m.size for m in theirs)


@pytest.mark.slow  # 49 frames of ViT forward, twice: the fixture test above makes the same claim on 6 frames
def test_dino_preset_equals_dinos_script_on_a_whole_sequence(shared_data):
    """siammae-track --preset dino gives DINO's masks, every pixel of every frame of blackswan (50 frames at short
    side 240, a 15 x 24 grid, so the 12-patch window restricts; 2 blocks to keep it fast): the encoder runs DINO's
    operation order (bit-identical features), the keys are normalised in DINO's layout, and DINO's weights keep
    ties at the k-th key. Before these, near-ties of the top-k drifted the masks apart later in a sequence."""
    frames, mask = _seq(shared_data)
    model = _dino_format_vit(depth=2)
    theirs = dino_script(model, frames, mask, 240, 16)  # short side 240: 427 -> 384 wide
    ours = [m for i, m in Tracker(model, "dino", device="cpu", size=240).masks(frames, mask) if i > 0]
    assert len(ours) == len(frames) - 1 == 49
    for t, (a, b) in enumerate(zip(theirs, ours, strict=True), 1):
        assert np.array_equal(a, b), f"frame {t}: {np.mean(a != b):.5f} of the pixels differ"
    assert all(0 < m.sum() < m.size for m in theirs)  # the swan is tracked, not lost or everywhere


def test_exact_features_are_dinos_bit_for_bit(fixture_data):
    """ViTEncoder.features on CPU fp32 equals DINO's get_intermediate_layers written out, bit for bit, for a batch
    (the driver encodes chunks of decoded, channels-last frames; DINO one frame at a time); SDPA is only close."""
    frames, _ = _seq(fixture_data)
    model = _dino_format_vit(depth=2)
    x = torch.stack([dino_read_frame(f, 160) for f in frames[:3]]).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ours = model.features(x)
        theirs = torch.stack([dino_vit_features(model, f[None]) for f in x])
        sdpa = model.features(x, attention="sdpa")
    assert torch.equal(ours, theirs)
    torch.testing.assert_close(sdpa, theirs, atol=1e-4, rtol=0)


def test_exact_features_with_a_scale_that_is_not_a_power_of_two(fixture_data):
    """head_dim 48: the scale 48^-0.5 is applied to the scores after q k^T, as DINO does (only a power of two may be
    folded into q); still DINO's features bit for bit."""
    frames, _ = _seq(fixture_data)
    torch.manual_seed(0)
    model = ViTEncoder(model_config("vits16", depth=2, embed_dim=96, num_heads=2, pos_embed="learned")).eval()
    torch.nn.init.trunc_normal_(model.pos_embed, std=0.02)
    x = torch.stack([dino_read_frame(f, 160) for f in frames[:2]])
    with torch.inference_mode():
        assert torch.equal(model.features(x), torch.stack([dino_vit_features(model, f[None]) for f in x]))


def test_the_presets_attention_decides_the_features_and_is_overridable():
    """dino on a CPU in fp32 runs DINO's order ("auto"); ``attention="sdpa"`` (``--attention sdpa``) the fused
    kernel; the siammae-* presets the fused kernel unless told "exact". A chunk of frames (encoded one frame at a
    time on a CPU) gives each frame's features alone, bit for bit."""
    model = _dino_format_vit(depth=1)
    frames = torch.randint(0, 256, (3, 3, 64, 96), dtype=torch.uint8)
    cases = [("dino", {}, "exact"), ("dino", {"attention": "sdpa"}, "sdpa"),
             ("siammae-davis", {}, "sdpa"), ("siammae-davis", {"attention": "exact"}, "exact")]  # fmt: skip
    for preset, overrides, mode in cases:
        encoder = Tracker(model, preset, device="cpu", size=(64, 96), **overrides).encoder
        x = normalize(frames.float(), encoder._mean, encoder._std)
        with torch.inference_mode():
            exact, sdpa = model.features(x, attention="exact"), model.features(x, attention="sdpa")
            assert not torch.equal(exact, sdpa)  # the two orders round differently: the check below tells them apart
            assert torch.equal(
                torch.cat([model.features(f[None], attention=mode) for f in x]), model.features(x, attention=mode)
            )
            assert torch.equal(encoder(frames), exact if mode == "exact" else sdpa), (preset, overrides)
