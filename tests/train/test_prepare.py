"""The prepared frame format: siammae-prepare -> shards + index, pairs read through it (local and HTTP), training
on it with an exact resume, the device-decode path, corrupt data, and the --total-steps schedule."""

import http.server
import json
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import assert_one_line_error
from PIL import Image

from siammae.cli.prepare import cli as prepare_cli
from siammae.cli.train import cli as train_cli
from siammae.data.shards import PreparedFrames, is_prepared
from siammae.data.video import read_frames, write_video
from siammae.data.video_decoders import read_frames_torchcodec, torchcodec_available
from siammae.errors import InputError, MissingExtraError
from siammae.model.checkpoint import read_checkpoint
from siammae.train import TrainConfig, train
from siammae.train.data import PairDataset, SampleKey, collate
from siammae.train.optim import cut_schedule_warning, lr_at
from siammae.train.prepare import PrepareSettings, prepare
from siammae.train.prepared_data import PreparedPairDataset, collate_jpeg, decode_jpeg_cpu, decode_views

H, W = 40, 48  # source frames; prepared at short side 48 >= 40, so stored unresized (pairs comparable)


def smooth_motion(n: int, seed: int):
    """A smooth texture sliding 1 px per frame (JPEG and h264 keep it well: the comparisons stay tight)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (H // 8 + 1, (W + n) // 8 + 2, 3)).astype(np.uint8)
    big = np.asarray(Image.fromarray(small).resize((small.shape[1] * 8, small.shape[0] * 8), Image.BICUBIC))
    for t in range(n):
        yield np.ascontiguousarray(big[:H, t : t + W])


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """5 short mp4s of 20-24 frames and a corrupt file."""
    root = tmp_path_factory.mktemp("src")
    for i in range(5):
        write_video(root / f"clip{i}.mp4", smooth_motion(20 + i, seed=i), fps=10)
    (root / "corrupt.mp4").write_bytes(b"\x1a\x45\xdf\xa3" + bytes(200))
    return root


@pytest.fixture(scope="module")
def prepared(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "set"
    result = prepare([videos], out, PrepareSettings(short_side=48, videos_per_shard=2), workers=2, quiet=True)
    return out, result


def test_shards_index_and_summary(prepared, videos):
    out, result = prepared
    assert (result.videos, result.frames, result.shards_made, result.shards_kept) == (5, 110, 3, 0)
    assert [Path(s).name for s, _ in result.skipped] == ["corrupt.mp4"]
    assert "corrupt.mp4" in (out / "skipped.txt").read_text() and "skipped 1 unreadable" in result.summary()
    assert is_prepared(out) and not is_prepared(videos)
    frames = PreparedFrames(out)
    index = json.loads((out / "index.json").read_text())
    assert [v["frames"] for v in index["videos"]] == [20, 21, 22, 23, 24]
    # WebDataset layout: members <video>/<frame>.jpg; the index's offsets point at each member's data
    for v in range(len(frames)):
        shard = out / frames.shards[frames.shard[v]]
        with tarfile.open(shard) as tar:
            for t in (0, frames.num_frames(v) - 1):
                member = tar.getmember(f"{frames.ids[v]:08d}/{t:06d}.jpg")
                assert member.offset_data == frames.offsets[frames.first[v] + t, 0]
                assert tar.extractfile(member).read() == frames.read(v, [t])[0]


def test_resume_keeps_finished_shards_and_refuses_other_settings(videos, tmp_path):
    out = tmp_path / "set"
    settings = PrepareSettings(short_side=48, videos_per_shard=2)
    prepare([videos], out, settings, quiet=True)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    (out / "shard-000001.json").unlink()  # as if interrupted while making shard 1
    again = prepare([videos], out, settings, quiet=True)
    assert (again.shards_made, again.shards_kept, again.videos) == (1, 2, 5)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    assert [n for n in before if before[n] != after[n]] == ["shard-000001.tar"]
    with pytest.raises(InputError, match="short_side 48 -> 32"):
        prepare([videos], out, PrepareSettings(short_side=32, videos_per_shard=2), quiet=True)


def test_prepare_cli(videos, tmp_path):
    r = CliRunner().invoke(prepare_cli, [str(videos), "--out", str(tmp_path / "p"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "prepared 5 videos, 110 frames" in r.output
    assert_one_line_error(CliRunner().invoke(prepare_cli, [str(tmp_path / "nope"), "--out", str(tmp_path / "q")]),
                          "nope", "no such file")  # fmt: skip
    r = CliRunner().invoke(prepare_cli, [str(videos), "--out", str(tmp_path / "q"), "--quality", "0"])
    assert_one_line_error(r, "--quality 0")
    assert not (tmp_path / "q").exists()  # options are checked before anything is written


def keys(n=6):
    return [SampleKey(v % 5, 0, p) for v, p in zip(range(n), range(3, 3 + n), strict=True)]


def test_pair_from_prepared_equals_pair_from_source(prepared):
    """Same seed and key -> the same frames, crop and flip as from the source video, to JPEG precision."""
    frames = PreparedFrames(prepared[0])
    source = PairDataset([frames.source(v) for v in range(len(frames))], 32, seed=3, gap=(2, 6))
    ours = PreparedPairDataset(frames, 32, seed=3, gap=(2, 6), decode="cpu")
    a, b = collate([source[k] for k in keys()]), collate([ours[k] for k in keys()])
    other = collate([ours[SampleKey(k.video, 0, k.position + 100)] for k in keys()])
    # JPEG tolerance: what storing costs on these frames (stored vs decoded from the video, whole frames)
    stored = [decode_jpeg_cpu(d, "").permute(1, 2, 0).numpy() for d in frames.read(1, [0, 9])]
    decoded = read_frames(frames.source(1), [0, 9])
    jpeg_err = np.mean([np.abs(s.astype(int) - v).mean() for s, v in zip(stored, decoded, strict=True)])
    for name in ("f1", "f2"):
        err = (a[name].float() - b[name].float()).abs().mean().item()
        assert err <= jpeg_err, (name, err, jpeg_err)
        assert (a[name].float() - other[name].float()).abs().mean().item() > 5 * jpeg_err  # other draws: far off


def test_device_decode_equals_cpu_decode(prepared):
    """decode="device" (bytes + draws in the worker, decode / crop / resize where the model runs) gives the pixels
    of decode="cpu"; on CUDA through nvJPEG, here through the same call on the CPU."""
    frames = PreparedFrames(prepared[0])
    cpu = PreparedPairDataset(frames, 32, seed=1, gap=(2, 6), decode="cpu")
    dev = PreparedPairDataset(frames, 32, seed=1, gap=(2, 6), decode="device")
    a = collate([cpu[k] for k in keys()])
    batch = collate_jpeg([dev[k] for k in keys()])
    assert batch["views"].shape == (12, 5) and batch["lengths"].sum() == batch["jpeg"].numel()
    f1, f2, bad = decode_views(batch, 32, torch.device("cpu"))
    assert torch.equal(f1, a["f1"]) and torch.equal(f2, a["f2"]) and bad == []
    # a JPEG damaged inside (its markers intact, so the worker passed it): reported, grey, the rest decoded
    start = int(batch["lengths"][:5].sum())
    batch["jpeg"][start + 2 : start + 100] = 0  # frame 5 = f2 of pair 2 (sample 1): tables gone
    g1, g2, bad = decode_views(batch, 32, torch.device("cpu"))
    assert len(bad) == 1 and bad[0][0] == frames.source(keys()[1].video) and "cannot decode JPEG" in bad[0][1]
    assert torch.equal(g1, f1) and torch.equal(g2[:2], f2[:2]) and torch.equal(g2[3:], f2[3:])
    assert (g2[2] == 128).all()


@pytest.mark.gpu
def test_gpu_decode_matches_cpu(prepared):
    frames = PreparedFrames(prepared[0])
    cpu = PreparedPairDataset(frames, 32, seed=1, gap=(2, 6), decode="cpu")
    dev = PreparedPairDataset(frames, 32, seed=1, gap=(2, 6), decode="device")
    a = collate([cpu[k] for k in keys()])
    f1, f2, _ = decode_views(collate_jpeg([dev[k] for k in keys()]), 32, torch.device("cuda"))
    # nvJPEG's IDCT and upsampling differ from libjpeg-turbo's by a few levels
    assert (f1.cpu().float() - a["f1"].float()).abs().mean() < 2 and (
        f2.cpu().float() - a["f2"].float()
    ).abs().mean() < 2


def test_corrupt_shard_is_reported_and_skipped(prepared, tmp_path):
    out = tmp_path / "set"
    shutil.copytree(prepared[0], out)
    frames = PreparedFrames(out)
    # shard 0 (videos 0 and 1): garbage over every frame's JPEG; shard 2 (video 4): truncated
    with open(out / frames.shards[0], "r+b") as f:
        for row in frames.offsets[frames.first[0] : frames.first[2]]:
            f.seek(int(row[0]))
            f.write(b"\x00" * 16)
    size = (out / frames.shards[2]).stat().st_size
    with open(out / frames.shards[2], "r+b") as f:
        f.truncate(size // 3)
    for decode in ("cpu", "device"):
        ds = PreparedPairDataset(PreparedFrames(out), 32, seed=0, gap=(2, 6), decode=decode)
        for video, shard in ((0, "shard-000000.tar"), (4, "shard-000002.tar")):
            sample = ds[SampleKey(video, 0, 7)]
            (first, why), *more = sample["skipped"]  # the asked video, then any bad replacement drawn
            assert Path(first).name == f"clip{video}.mp4" and shard in why, why
            assert all("shard-000000.tar" in w or "shard-000002.tar" in w for _, w in more)
            assert len(sample["views"] if decode == "device" else sample["f1"]) == 2  # replaced by a good video


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """http.server with byte ranges (its own handler ignores the Range header); counts bytes sent."""

    sent = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        if rng:
            a, b = (int(x) for x in rng.removeprefix("bytes=").split("-"))
            data = data[a : b + 1]
            self.send_response(206)
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        RangeHandler.sent += len(data)  # before sending: the client may go on as soon as it has the bytes
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def served(prepared):
    handler = lambda *a, **kw: RangeHandler(*a, directory=str(prepared[0]), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_http_served_shards_read_only_the_pair_bytes(prepared, served):
    local, remote = PreparedFrames(prepared[0]), PreparedFrames(served)
    assert is_prepared(served) and len(remote) == len(local)
    RangeHandler.sent = 0
    assert remote.read(3, [0, 7, 19]) == local.read(3, [0, 7, 19])
    assert RangeHandler.sent == sum(int(local.offsets[local.first[3] + t, 1]) for t in (0, 7, 19))
    a = PreparedPairDataset(local, 32, seed=0, gap=(2, 6))[SampleKey(2, 0, 5)]
    b = PreparedPairDataset(remote, 32, seed=0, gap=(2, 6))[SampleKey(2, 0, 5)]
    assert torch.equal(a["f1"], b["f1"]) and torch.equal(a["f2"], b["f2"])


# ------------------------------------------------------------------------------------------------ training
def config(data, out, **kw) -> TrainConfig:
    """Tiny model at 32 px, 4 pairs (2 videos) per step over 5 prepared videos: 2 steps per epoch."""
    base = dict(data=(str(data),), out=str(out), model="tiny", input_size=32, batch_size=4, repeat=2, gap=(2, 6),
                epochs=20, warmup_epochs=2, blr=1e-2, workers=0, log_every=1, save_every=3, vis_every=0,
                device="cpu", quiet=True)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_train_on_prepared_resumes_exactly_and_decode_paths_agree(prepared, tmp_path):
    data = prepared[0]
    straight = train(config(data, tmp_path / "a", max_steps=6))
    first = train(config(data, tmp_path / "b", max_steps=3))
    second = train(config(data, tmp_path / "b", max_steps=6, resume=True, workers=2))
    assert first.losses + second.losses == straight.losses
    a, b = read_checkpoint(straight.checkpoint), read_checkpoint(second.checkpoint)
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    # the device path (decode where the model runs: the CPU here) trains the same steps
    device = train(config(data, tmp_path / "c", max_steps=6, decode="device"))
    assert device.losses == straight.losses
    assert json.loads((tmp_path / "a" / "run.json").read_text())["videos"] == 5


def test_schedule_warning_and_total_steps(prepared, tmp_path):
    data = prepared[0]
    args = ["--data", str(data), "--model", "tiny", "--input-size", "32", "--batch-size", "4", "--gap", "2", "6",
            "--workers", "0", "--device", "cpu", "--vis-every", "0", "--quiet", "--log-every", "1",
            "--max-steps", "2"]  # fmt: skip
    cut = CliRunner().invoke(train_cli, [*args, "--out", str(tmp_path / "cut")])  # 2 steps of a 2000-epoch schedule
    assert cut.exit_code == 0, cut.output
    assert "warning: the run stopped at step 2 of a 4000-step schedule" in cut.output
    assert "--total-steps 2" in cut.output
    # --total-steps: the schedule is the run; warm-up a fraction of it, cosine down to min_lr at the end
    run = CliRunner().invoke(train_cli, [*args, "--out", str(tmp_path / "full"), "--total-steps", "4",
                                         "--warmup-frac", "0.5", "--max-steps", "4"])  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "warning" not in run.output
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    peak = 1.5e-4 * 4 / 256
    assert lrs == pytest.approx([lr_at(s, peak, 0.0, 2, 4) for s in range(4)])
    assert lrs[2] == pytest.approx(peak)
    with pytest.raises(InputError, match="warmup_frac"):
        TrainConfig(warmup_frac=0.1)


# ---------------------------------------------------------------------------------------------- torchcodec
def test_torchcodec_is_optional(monkeypatch):
    from siammae.data import video_decoders as V

    monkeypatch.setattr(V, "torchcodec_available", lambda: False)
    assert V.video_decoder("auto") == "pyav"
    with pytest.raises(MissingExtraError, match=r"siammae\[torchcodec\]"):
        V.video_decoder("torchcodec")
    monkeypatch.setenv(V.ENV, "pyav")
    assert V.video_decoder() == "pyav"


@pytest.mark.skipif(not torchcodec_available(), reason="torchcodec not installed or its FFmpeg libraries missing")
def test_torchcodec_reads_the_frames_pyav_reads(videos):
    path = videos / "clip3.mp4"
    asked = [17, 2, 9, 2]
    for a, b in zip(read_frames(path, asked), read_frames_torchcodec(path, asked), strict=True):
        assert np.array_equal(a, b)


def test_cut_schedule_warning_only_when_the_cut_keeps_the_lr_low():
    assert "step 10 of a 1000-step schedule" in cut_schedule_warning(10, 1000, 100, 1e-3, 0.0)  # in warm-up
    assert cut_schedule_warning(99, 1000, 100, 1e-3, 0.0) is None  # lr 0.98 x peak: cut, but trained at full rate
    assert cut_schedule_warning(990, 1000, 100, 1e-3, 0.0) is None  # low lr from the cosine itself
    assert cut_schedule_warning(1000, 1000, 100, 1e-3, 0.0) is None  # the whole schedule
