"""Many videos in one run: track_many / run_batch (resumable, failures recorded, summary), manifests, sharding."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from siammae.data.masks import write_mask
from siammae.data.synthetic import make_synthetic_clip
from siammae.data.video import write_video
from siammae.errors import InputError
from siammae.model.registry import create_model
from siammae.propagation.driver import Tracker
from siammae.tracking.batch import run_batch, track_many
from siammae.tracking.manifest import BatchItem, expand_inputs, read_manifest
from siammae.tracking.shard import shard

SIZE = (32, 48)


def make_videos(root, n, corrupt=None):
    """``n`` tiny synthetic videos (v0.mp4, ...) with first masks (m0.png, ...); video ``corrupt`` is garbage."""
    items = []
    for k in range(n):
        video, mask = root / f"v{k}.mp4", root / f"m{k}.png"
        frames, masks = make_synthetic_clip(4 + k % 2, SIZE, seed=k)
        write_video(video, frames, fps=10)
        write_mask(mask, masks[0])
        if k == corrupt:
            video.write_bytes(b"\x00not a video" * 64)
        items.append(BatchItem(str(video), mask=str(mask)))
    return items


@pytest.fixture(scope="module")
def tracker():
    torch.manual_seed(0)
    return Tracker(create_model("tiny"), preset="dino", device="cpu", size=SIZE[0], chunk=2)


def test_batch_with_a_corrupt_video_then_resume(tmp_path, tracker):
    items = make_videos(tmp_path, 5, corrupt=2)
    out = tmp_path / "out"
    summary = run_batch(tracker, items, out, progress=False)
    assert [r["status"] for r in summary["rows"]] == ["complete", "complete", "error", "complete", "complete"]
    assert summary["complete"] == 4 and summary["failed"] == 1 and "v2.mp4" in summary["rows"][2]["error"]
    assert summary["frames"] == 4 + 5 + 4 + 5 and summary["frames_per_second"] > 0
    for k in (0, 1, 3, 4):
        pngs = sorted(p.name for p in (out / f"v{k}" / "masks").iterdir())
        assert pngs == [f"{i:05d}.png" for i in range(4 + k % 2)]
        assert json.loads((out / f"v{k}" / "report.json").read_text())["status"] == "complete"
    assert json.loads((out / "v2" / "report.json").read_text())["status"] == "error"
    assert json.loads((out / "summary.json").read_text())["rows"] == summary["rows"]
    md = (out / "summary.md").read_text()
    assert "| v2 | error |" in md and "4 done" in md and "1 failed" in md
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no partial folder left
    first = {k: (out / f"v{k}" / "masks" / "00003.png").stat().st_mtime_ns for k in (0, 1, 3, 4)}

    summary = run_batch(tracker, items, out, progress=False)  # finished videos are skipped, the failed one redone
    assert [r["status"] for r in summary["rows"]] == ["skipped", "skipped", "error", "skipped", "skipped"]
    assert summary["frames"] == 0 and summary["skipped"] == 4
    assert all((out / f"v{k}" / "masks" / "00003.png").stat().st_mtime_ns == first[k] for k in first)

    summary = run_batch(tracker, items[:2], out, overwrite=True, progress=False)
    assert [r["status"] for r in summary["rows"]] == ["complete", "complete"]


def test_an_interrupted_video_is_redone_and_replaced_whole(tmp_path, tracker):
    items = make_videos(tmp_path, 1)
    out = tmp_path / "out"
    folder = out / "v0"
    (folder / "masks").mkdir(parents=True)
    (folder / "masks" / "99999.png").write_bytes(b"stale")  # a partial output of an earlier, killed run
    (folder / "report.json").write_text(json.dumps({"status": "interrupted"}))
    (out / ".v0.partial").mkdir()  # the killed run's work folder
    (result,) = track_many(tracker, items, out, progress=False)
    assert result.status == "complete" and result.report.frames == 4
    assert sorted(p.name for p in (folder / "masks").iterdir()) == [f"{i:05d}.png" for i in range(4)]
    assert sorted(p.name for p in out.iterdir()) == ["v0"]


def test_resume_skips_only_the_same_work(tmp_path):
    """Issue 29: a finished video is skipped only when it is the same video tracked with the same settings; a
    manifest row that now names another video, or other weights or options, is refused before anything changes
    (--overwrite redoes it)."""
    from siammae.errors import OutputError
    from siammae.model.checkpoint import load_model, save_checkpoint

    torch.manual_seed(0)
    a = save_checkpoint(tmp_path / "a.pt", create_model("tiny"))
    torch.manual_seed(1)
    b = save_checkpoint(tmp_path / "b.pt", create_model("tiny"))

    def track(ckpt, **options):  # what siammae-track builds for each run
        return Tracker(load_model(ckpt), **{"preset": "dino", "device": "cpu", "size": SIZE[0], "chunk": 2, **options})

    items = make_videos(tmp_path, 2)
    out = tmp_path / "out"
    run_batch(track(a), items, out, progress=False)
    masks = lambda: {p.name: p.read_bytes() for p in (out / "v0" / "masks").iterdir()}  # noqa: E731
    before = masks()
    assert run_batch(track(a, chunk=3), items, out, progress=False)["skipped"] == 2  # the same work: skipped
    swapped = [BatchItem(items[1].video, mask=items[1].mask, out="v0"), items[1]]  # row v0: v0.mp4 -> v1.mp4
    with pytest.raises(OutputError, match=r"v0/ holds the finished results of .*v0\.mp4, not of .*v1\.mp4"):
        run_batch(track(a), swapped, out, progress=False)
    with pytest.raises(OutputError, match=r"v0/ was finished with other settings \(propagation differ"):
        run_batch(track(a, topk=1), items, out, progress=False)
    with pytest.raises(OutputError, match=r"v0/ was finished with other settings \(weights differ"):
        run_batch(track(b), items, out, progress=False)
    assert masks() == before  # refused: the old results are kept as they were
    summary = run_batch(track(b), swapped, out, overwrite=True, progress=False)  # redone on request
    assert [r["status"] for r in summary["rows"]] == ["complete", "complete"]
    assert json.loads((out / "v0" / "report.json").read_text())["video"]["path"] == items[1].video


def test_manifests_csv_and_jsonl(tmp_path):
    (tmp_path / "a.csv").write_text("video,mask,out\nclips/x.mp4,x.png,\nclips/y.mp4,y.png,why\n")
    items = read_manifest(tmp_path / "a.csv")
    assert items == [BatchItem(str(tmp_path / "clips/x.mp4"), mask=str(tmp_path / "x.png")),
                     BatchItem(str(tmp_path / "clips/y.mp4"), mask=str(tmp_path / "y.png"), out="why")]  # fmt: skip
    assert [i.name for i in items] == ["x", "why"]
    rows = [{"video": "/d/x", "mask_dir": "/a/x"}, {"video": "/d/y.mp4", "keypoints": "/k/y.json"}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert read_manifest(tmp_path / "b.jsonl") == [BatchItem("/d/x", mask_dir="/a/x"),
                                                   BatchItem("/d/y.mp4", keypoints="/k/y.json")]  # fmt: skip
    bad = {
        "video,colour\nx.mp4,red\n": "unknown columns",
        "clip,mask\nx.mp4,m.png\n": "'video' column",
        "video,mask\nx.mp4,\n": "no mask, mask_dir or keypoints",
        "video,mask\na/x.mp4,m.png\nb/x.mp4,m.png\n": "would both write x/",
        "video,mask,out\nx.mp4,m.png,../up\n": "not a plain folder name",
        "video,mask\n": "lists no videos",
    }
    for text, message in bad.items():
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(InputError, match=message):
            read_manifest(tmp_path / "bad.csv")


def test_folder_of_videos_and_frame_folders(tmp_path):
    frames, _ = make_synthetic_clip(2, SIZE, seed=0)
    (tmp_path / "videos" / "seq").mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / "videos" / "seq" / f"{i:05d}.jpg")
    write_video(tmp_path / "videos" / "clip.mp4", frames, fps=10)
    (tmp_path / "videos" / "notes.txt").write_text("")
    items = expand_inputs([tmp_path / "videos"], mask_root=tmp_path / "ann")
    assert [(i.name, i.mask_dir) for i in items] == [("clip", str(tmp_path / "ann" / "clip")),
                                                     ("seq", str(tmp_path / "ann" / "seq"))]  # fmt: skip
    with pytest.raises(InputError, match="need one mask folder each"):
        expand_inputs([tmp_path / "videos"])


def test_shards_balance_frames_and_cover_every_video_once():
    rng = np.random.default_rng(0)
    sizes = [int(x) for x in rng.integers(1, 1000, size=37)]
    for world in (1, 2, 3, 8):
        parts = shard(sizes, world)
        assert sorted(i for p in parts for i in p) == list(range(37))
        loads = [sum(sizes[i] for i in p) for p in parts]
        assert max(loads) - min(loads) <= max(sizes)
    assert shard([10, 1, 1, 8], 2) == [[0], [1, 2, 3]]


# ------------------------------------------------------------------------------------------------ hardening
def test_a_second_batch_into_the_same_out_is_refused_and_deletes_nothing(tmp_path, tracker):
    from siammae.errors import OutputError
    from siammae.tracking.batch import claim_batch_folder

    items = make_videos(tmp_path, 2)
    out = tmp_path / "out"
    first = claim_batch_folder(out, items, overwrite=False)  # another batch is running into out
    (out / ".v0.partial").mkdir()
    (out / ".v0.partial" / "00000.png").write_bytes(b"work in progress")
    try:
        with pytest.raises(OutputError, match="another siammae run"):
            run_batch(tracker, items, out, progress=False)
        with pytest.raises(OutputError, match="another siammae run"):
            list(track_many(tracker, items, out, progress=False))
        assert (out / ".v0.partial" / "00000.png").read_bytes() == b"work in progress"
    finally:
        first.close()
    run_batch(tracker, items, out, progress=False)  # released: the next batch runs
    assert not (out / ".siammae.lock").exists()


def test_overwrite_leaves_this_batch_only(tmp_path, tracker):
    items = make_videos(tmp_path, 3)
    out = tmp_path / "out"
    run_batch(tracker, items, out, overlay=True, progress=False)
    assert (out / "v2" / "overlay.mp4").is_file()
    summary = run_batch(tracker, items[:2], out, overwrite=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "summary.md", "v0", "v1"]  # v2: stale, removed
    assert not (out / "v0" / "overlay.mp4").exists()  # each folder is this run's outputs only
    assert [r["name"] for r in summary["rows"]] == ["v0", "v1"]


def test_names_are_checked_up_front(tmp_path):
    from siammae.tracking.manifest import check_items

    for bad, why in [("summary.json", "writes itself"), ("summary.md", "writes itself"), ("a\nb", "control"),
                     ("a|b", "'|'"), ("a\0b", "control"), ("..", "plain"), (".hidden", "starts with '.'")]:  # fmt: skip
        with pytest.raises(InputError, match=why):
            check_items([BatchItem("v.mp4", mask="m.png", out=bad)], source="test")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"video": "v.mp4", "mask": {"nested": 1}}) + "\n")
    with pytest.raises(InputError, match="'mask' must be a string"):
        read_manifest(manifest)
    manifest.write_text("[" * 100_000 + "\n")
    with pytest.raises(InputError, match="nested too deeply"):
        read_manifest(manifest)


def test_summary_error_cells_stay_one_table_row():
    from siammae.tracking.batch import summary_markdown

    row = {"name": "v", "status": "error", "error": "line one\nline | two", "frames": 0, "width": None, "height": None,
           "fps": None, "stage_fps": {}, "peak_host_mib": None, "peak_gpu_mib": None}  # fmt: skip
    s = {"videos": 1, "complete": 0, "skipped": 0, "error": 1, "interrupted": 0, "frames": 0, "wall_seconds": 1.0,
         "frames_per_second": 0.0, "videos_per_second": 1.0, "peak_host_mib": None, "peak_gpu_mib": None,
         "rows": [row]}  # fmt: skip
    table = [ln for ln in summary_markdown(s).splitlines() if ln.startswith("| v |")]
    assert table == ["| v | error | 0 | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | line one line \\| two |"]
