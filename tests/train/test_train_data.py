"""Training data: finding clips, pair sampling, the same crop and flip on both frames, bad files, sample order."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from siammae.data.video import write_video
from siammae.errors import InputError
from siammae.train import data as D
from siammae.train.data import PairDataset, SampleKey, collate, find_videos, random_resized_crop_box
from siammae.train.sampler import StepSampler, shard_seed

H, W = 40, 56


def coded_frames(n: int, offset: int = 0):
    """Frames whose pixels say where they are: R = 3x, G = 4y (a gradient that reveals the crop and the flip),
    B = 6 * frame index (constant over the frame, so it survives any crop and resize exactly)."""
    y, x = np.mgrid[0:H, 0:W]
    for t in range(n):
        yield np.stack([3 * x, 4 * y, np.full_like(x, 6 * (t + offset))], -1).astype(np.uint8)


def write_folder(folder: Path, n: int, still: bool = False) -> Path:
    folder.mkdir(parents=True)
    for t, f in enumerate(coded_frames(n)):
        Image.fromarray(next(coded_frames(1)) if still else f).save(folder / f"{t:05d}.png")
    return folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    write_folder(root / "a" / "clip0", 40)
    write_folder(root / "a" / "clip1", 40)
    write_folder(root / "b" / "nested" / "clip2", 3)  # shorter than the minimum gap
    write_video(root / "b" / "v.mp4", coded_frames(30), fps=10)
    (root / "b" / "broken.mp4").write_bytes(b"\x00" * 64)
    (root / "b" / "notes.md").write_text("not data")
    write_folder(root / "c" / "still", 20, still=True)  # every frame the same
    return root


def frame_index(x: torch.Tensor) -> float:
    """The frame index coded in the blue channel of a (3, S, S) uint8 frame."""
    return x[2].float().mean().item() / 6


def test_find_videos_walks_folders_lists_and_frame_folders(clips, tmp_path):
    found = find_videos([clips])
    names = [Path(p).name for p in found]
    assert sorted(names) == ["broken.mp4", "clip0", "clip1", "clip2", "still", "v.mp4"]
    assert found == sorted(found)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# comment\n{clips / 'a' / 'clip0'}\n\n{clips / 'b'}\n")
    assert [Path(p).name for p in find_videos(listing)] == ["clip0", "broken.mp4", "clip2", "v.mp4"]
    rel = clips / "rel.txt"
    rel.write_text("a/clip1\n")
    assert find_videos([rel]) == [str(clips / "a" / "clip1")]


def test_find_videos_errors_name_the_input(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("")
    with pytest.raises(InputError, match=r"no videos or frame folders found in .*empty, .*other"):
        find_videos([tmp_path / "empty", tmp_path / "other"])
    with pytest.raises(InputError, match="missing: no such file"):
        find_videos([tmp_path / "missing"])
    with pytest.raises(InputError, match="no training data given"):
        find_videos([])


def make_dataset(clips, **kw):
    videos = [
        str(clips / "a" / "clip0"),
        str(clips / "a" / "clip1"),
        str(clips / "b" / "nested" / "clip2"),
        str(clips / "b" / "v.mp4"),
        str(clips / "b" / "broken.mp4"),
        str(clips / "c" / "still"),
    ]
    args = dict(size=24, seed=0, gap=(4, 12), repeat=2, crop_scale=(0.5, 1.0), augment="spatial")
    return PairDataset(videos, **{**args, **kw})


def test_pairs_share_crop_and_flip_and_respect_the_gap(clips):
    ds = make_dataset(clips)
    flips, boxes = set(), set()
    for pos in range(40):
        s = ds[SampleKey(video=pos % 2, epoch=0, position=pos)]
        assert s["f1"].shape == s["f2"].shape == (2, 3, 24, 24) and s["f1"].dtype == torch.uint8
        assert s["skipped"] == [] and s["short"] == 0
        for a, b in zip(s["f1"], s["f2"], strict=True):
            # the same crop and flip on both frames: the position channels are identical
            assert torch.equal(a[:2], b[:2])
            t1, t2 = frame_index(a), frame_index(b)
            assert t1 == int(t1) and t2 == int(t2)
            assert 4 <= t2 - t1 <= 12 and t1 >= 0 and t2 < 40
            flips.add(bool(a[0, 0, 0] > a[0, 0, -1]))  # R grows with x unless flipped
            boxes.add(tuple(a[:2, 0, 0].tolist()))
    assert flips == {True, False}
    assert len(boxes) > 20  # crops differ between pairs


def test_no_augmentation_is_the_centre_square(clips):
    ds = make_dataset(clips, augment="none", size=40)
    s = ds[SampleKey(0, 0, 0)]
    expected = next(coded_frames(1))[:, 8:48, :2]  # centre 40x40 of 40x56, resized 40 -> 40: unchanged
    assert np.array_equal(s["f1"][0, :2].permute(1, 2, 0).numpy(), expected)


def test_color_jitter_is_the_same_on_both_frames(clips):
    ds = make_dataset(clips, augment="color")
    plain = make_dataset(clips, augment="none")
    for pos in range(4):
        key = SampleKey(5, 0, pos)  # a clip whose frames are all the same
        s, p = ds[key], plain[key]
        assert torch.equal(p["f1"], p["f2"])
        assert not torch.equal(s["f1"], p["f1"])  # colours changed
        assert torch.equal(s["f1"], s["f2"])  # ... and identically on both frames


def test_samples_are_a_function_of_their_key(clips):
    ds, again = make_dataset(clips), make_dataset(clips)
    a, b = ds[SampleKey(0, 3, 17)], again[SampleKey(0, 3, 17)]
    assert torch.equal(a["f1"], b["f1"]) and torch.equal(a["f2"], b["f2"])
    c = ds[SampleKey(0, 3, 18)]
    assert not torch.equal(a["f1"], c["f1"])
    assert not torch.equal(a["f1"], make_dataset(clips, seed=1)[SampleKey(0, 3, 17)]["f1"])


def test_only_the_pair_frames_are_decoded(clips, monkeypatch):
    asked = []
    real = D.read_frames

    def spy(path, indices):
        asked.append(list(indices))
        return real(path, indices)

    monkeypatch.setattr(D, "read_frames", spy)
    make_dataset(clips, repeat=3)[SampleKey(1, 0, 0)]
    assert len(asked) == 1 and len(asked[0]) == 6  # one open per sample, 2 frames per pair


def test_short_video_uses_its_largest_gap(clips):
    s = make_dataset(clips)[SampleKey(2, 0, 0)]  # 3 frames, gap range 4..12
    assert s["short"] == 2
    for a, b in zip(s["f1"], s["f2"], strict=True):
        assert (frame_index(a), frame_index(b)) == (0, 2)


def test_video_file_decodes(clips):
    s = make_dataset(clips)[SampleKey(3, 0, 0)]
    for a, b in zip(s["f1"], s["f2"], strict=True):
        gap = frame_index(b) - frame_index(a)
        assert 3.5 <= gap <= 12.5  # h264 is lossy, the coded index is close


def test_read_frames_far_after_a_key_frame(tmp_path):
    """A seek lands on the key frame before the target, up to 10 s earlier (x264: one key frame per 250 frames):
    frames seconds after it must still be found (this once looped forever) and equal a plain decode."""
    import threading

    from siammae.data.video import open_video, read_frames

    path = tmp_path / "long_gop.mp4"
    y, x = np.mgrid[0:H, 0:W]
    frames = (np.stack([3 * x, 4 * y, np.full_like(x, 7 * t % 256)], -1).astype(np.uint8) for t in range(300))
    write_video(path, frames, fps=25)  # key frames 0 and 250
    every = [f.rgb for f in open_video(path)]
    asked = [[200], [10, 40, 200, 230], [299, 3, 3, 150], [0, 299]]
    got = {}
    worker = threading.Thread(target=lambda: got.update({i: read_frames(path, a) for i, a in enumerate(asked)}))
    worker.daemon = True
    worker.start()
    worker.join(timeout=60)
    assert len(got) == len(asked), "read_frames did not return"
    for i, a in enumerate(asked):
        assert all(np.array_equal(f, every[t]) for f, t in zip(got[i], a, strict=True))


def test_bad_video_is_replaced_and_reported(clips):
    ds = make_dataset(clips)
    s = ds[SampleKey(4, 0, 0)]
    assert len(s["skipped"]) >= 1
    path, reason = s["skipped"][0]
    assert path.endswith("broken.mp4") and "broken.mp4" in reason
    assert s["f1"].shape == (2, 3, 24, 24)  # a full sample from a replacement video
    mixed = clips / "mixed"
    write_folder(mixed, 12)
    Image.new("RGB", (W + 8, H)).save(mixed / "00005.png")  # one frame of another size
    s = PairDataset([str(mixed), str(clips / "a" / "clip0")], size=24, seed=0, gap=(4, 4), repeat=4)[SampleKey(0, 0, 0)]
    assert s["skipped"] and "frames differ in size" in s["skipped"][0][1]
    only_bad = PairDataset([str(clips / "b" / "broken.mp4")], size=24, seed=0)
    with pytest.raises(InputError, match="videos in a row could not be read"):
        only_bad[SampleKey(0, 0, 0)]


def test_collate_is_video_major(clips):
    ds = make_dataset(clips)
    samples = [ds[SampleKey(0, 0, 0)], ds[SampleKey(1, 0, 1)]]
    batch = collate(samples)
    assert batch["f1"].shape == (4, 3, 24, 24)
    assert torch.equal(batch["f1"][2], samples[1]["f1"][0])


def test_random_resized_crop_box_stays_inside_and_in_scale():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(rng, 90, 160, (0.5, 1.0))
        assert top >= 0 and top + h <= 90 and left >= 0 and left + w <= 160
        assert 0.5 * 90 * 160 * 0.9 <= h * w <= 90 * 160


# ---------------------------------------------------------------------------------------------------- sampler
def flatten(sampler):
    return [k for batch in sampler for k in batch]


def test_sampler_epochs_are_permutations_and_drop_the_last_partial_step():
    s = StepSampler(num_videos=10, videos_per_step=4, seed=0)
    assert s.steps_per_epoch == 2
    s.set_range(0, 4)
    keys = flatten(s)
    assert len(keys) == 16
    for epoch in (0, 1):
        vids = [k.video for k in keys if k.epoch == epoch]
        assert len(set(vids)) == 8  # 8 distinct videos of 10
    assert [k.video for k in keys[:8]] != [k.video for k in keys[8:]]  # reshuffled each epoch


def test_sampler_resume_continues_the_same_order():
    full = StepSampler(10, 4, seed=3)
    full.set_range(0, 7)
    part = StepSampler(10, 4, seed=3)
    part.set_range(3, 7)
    assert flatten(part) == flatten(full)[3 * 4 :]


def test_sampler_shards_do_not_depend_on_the_process_split():
    one = StepSampler(12, 4, world_size=1, rank=0, accum_steps=2, seed=1)
    one.set_range(0, 3)
    ranks = []
    for r in range(2):
        s = StepSampler(12, 4, world_size=2, rank=r, accum_steps=1, seed=1)
        s.set_range(0, 3)
        ranks.append(list(s))
    merged = [b for step in zip(*ranks, strict=True) for b in step]  # rank 0 then rank 1 per step = micro-batch 0, 1
    assert list(one) == merged
    with pytest.raises(ValueError, match="cannot be split"):
        StepSampler(12, 3, world_size=2)


def test_sampler_tiles_a_data_set_smaller_than_a_step():
    s = StepSampler(num_videos=1, videos_per_step=8, seed=0)
    assert s.steps_per_epoch == 1
    assert [k.video for k in flatten(s)] == [0] * 8
    assert len({k.position for k in flatten(s)}) == 8  # each copy is its own sample


def test_shard_seed_differs_per_step_and_shard():
    seeds = {shard_seed(0, step, shard) for step in range(20) for shard in range(4)}
    assert len(seeds) == 80
    assert shard_seed(0, 5, 1) == shard_seed(0, 5, 1)
