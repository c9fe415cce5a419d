"""The training loop on CPU: exact resume, checkpoints, logs, pictures, divergence, the CLI, DDP under torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from siammae.cli.train import cli
from siammae.data.video import write_video
from siammae.errors import InputError
from siammae.model.checkpoint import load_model, read_checkpoint
from siammae.model.siammae import SiamMAE
from siammae.train import TrainConfig, TrainingDivergedError, train
from siammae.train.state import list_checkpoints

REPO = Path(__file__).resolve().parents[2]


def moving_texture(n: int, seed: int, h: int = 40, w: int = 48):
    """A smooth random texture sliding right by 1 pixel per frame: frame pairs have something to predict."""
    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, (h // 4 + 1, (w + n) // 4 + 2, 3)).astype(np.uint8)
    big = np.asarray(Image.fromarray(big).resize((big.shape[1] * 4, big.shape[0] * 4), Image.BILINEAR))
    for t in range(n):
        yield np.ascontiguousarray(big[:h, t : t + w])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """6 short mp4s, 2 frame folders and a corrupt file: 8 usable clips."""
    root = tmp_path_factory.mktemp("videos")
    for i in range(6):
        write_video(root / "mp4" / f"clip{i}.mp4", moving_texture(20, seed=i), fps=10)
    for i in range(2):
        folder = root / "frames" / f"seq{i}"
        folder.mkdir(parents=True)
        for t, f in enumerate(moving_texture(16, seed=10 + i)):
            Image.fromarray(f).save(folder / f"{t:05d}.jpg")
    (root / "mp4" / "corrupt.mp4").write_bytes(b"\x1a\x45\xdf\xa3" + bytes(200))
    return root


def config(data, out, **kw) -> TrainConfig:
    """Tiny model at 32x32, 4 pairs (2 videos) per step: 4 steps per epoch over the 9 clips."""
    base = dict(
        data=(str(data),),
        out=str(out),
        model="tiny",
        input_size=32,
        batch_size=4,
        repeat=2,
        gap=(2, 6),
        epochs=10,
        warmup_epochs=2,
        blr=1e-2,
        workers=0,
        log_every=1,
        save_every=5,
        keep_last=2,
        vis_every=5,
        device="cpu",
        quiet=True,
    )
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def straight_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    return train(config(data, out, max_steps=20))


def test_resume_is_exact(data, tmp_path, straight_run):
    """2 x 10 steps with a resume in between (and another worker count) == 20 steps in one go."""
    first = train(config(data, tmp_path, max_steps=10))
    assert first.step == 10 and first.checkpoint.name == "step_00000010.pt"
    second = train(config(data, tmp_path, max_steps=20, resume=True, workers=2))
    assert second.step == 20 and len(second.losses) == 10
    assert first.losses + second.losses == straight_run.losses
    a = read_checkpoint(straight_run.checkpoint)
    b = read_checkpoint(second.checkpoint)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for pid, state in a["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, b["optimizer"]["state"][pid][k]), (pid, k)
    # the log was continued, not duplicated
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))


def test_run_folder_contents(straight_run):
    out = straight_run.out
    assert straight_run.loss < straight_run.losses[0]  # it learns
    assert [p.name for p in list_checkpoints(out)] == ["step_00000015.pt", "step_00000020.pt"]  # keep_last 2
    ckpt = read_checkpoint(out / "checkpoints" / "step_00000020.pt")
    assert ckpt["train"]["step"] == 20 and ckpt["train"]["epoch"] == 5.0
    assert ckpt["train"]["config"]["batch_size"] == 4
    model = load_model(out / "model.pt")
    assert isinstance(model, SiamMAE) and model.config.img_size == 32
    final = read_checkpoint(straight_run.checkpoint)["model"]
    assert all(torch.equal(v, final[k]) for k, v in model.state_dict().items())

    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(records) == 20
    rec = records[-1]
    assert {"step", "epoch", "loss", "lr", "samples_per_s", "time_s", "bad_videos", "skipped"} <= set(rec)
    assert rec["loss"] == pytest.approx(straight_run.loss)
    peak = 1e-2 * 4 / 256
    # record i is optimiser step i + 1, trained at epoch i / 4; warm-up is linear over 2 epochs (8 steps)
    assert [r["lr"] for r in records[:9]] == pytest.approx([peak * i / 8 for i in range(9)])
    assert records[9]["lr"] < peak
    assert rec["bad_videos"] == 1 and rec["skipped"] >= 1
    assert "corrupt.mp4" in (out / "bad_videos.txt").read_text()

    pngs = sorted((out / "vis").glob("*.png"))
    assert [p.name for p in pngs] == [f"step_{s:08d}.png" for s in (5, 10, 15, 20)]
    img = np.asarray(Image.open(pngs[-1]))
    assert img.shape == (4 * 34 + 2, 4 * 34 + 2, 3)  # 4 rows of f1 | masked f2 | prediction | target
    f1, masked, pred, target = (img[2:34, 2 + 34 * c : 34 + 34 * c].astype(int) for c in range(4))
    assert np.abs(f1 - target).mean() > 1  # two different frames
    # the prediction equals the target on the visible patches
    visible = (masked != 128).any(-1)
    assert visible.any() and np.abs(pred[visible] - target[visible]).max() <= 1

    run = json.loads((out / "run.json").read_text())
    assert run["steps_per_epoch"] == 4 and run["total_steps"] == 40 and run["videos"] == 9


def test_refuses_to_overwrite_or_change_a_run(data, straight_run):
    with pytest.raises(InputError, match="already holds checkpoints .*pass --resume"):
        train(config(data, straight_run.out, max_steps=21))
    with pytest.raises(InputError, match=r"other settings \(batch_size 4 -> 8\)"):
        train(config(data, straight_run.out, max_steps=21, batch_size=8, resume=True))


def test_resume_without_checkpoint_starts_fresh(data, tmp_path):
    result = train(config(data, tmp_path, max_steps=1, resume=True))
    assert result.step == 1


def test_divergence_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    cfg = config(data, tmp_path, max_steps=6, save_every=1, warmup_epochs=0, lr=1e36)
    with pytest.raises(TrainingDivergedError, match=r"step 2 .*the loss is (nan|inf).*step_00000001\.pt"):
        train(cfg)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001.pt"]
    weights = read_checkpoint(tmp_path / "checkpoints" / "step_00000001.pt")["model"]
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_accumulation_and_workers_give_the_same_steps(data, tmp_path):
    """The batch is cut into the same shards whether by accumulation or not; workers do not change the data."""
    a = train(config(data, tmp_path / "a", max_steps=3, accum_steps=2, workers=2))
    b = train(config(data, tmp_path / "b", max_steps=3, accum_steps=2, workers=0))
    assert a.losses == b.losses


def test_bf16_autocast_on_cpu(data, tmp_path):
    result = train(config(data, tmp_path, max_steps=2, precision="bf16"))
    assert all(np.isfinite(result.losses))
    with pytest.raises(InputError, match="fp16 needs a CUDA device"):
        train(config(data, tmp_path / "fp16", max_steps=1, precision="fp16"))


def test_ablation_flags_reach_the_model(data, tmp_path):
    result = train(
        config(
            data,
            tmp_path,
            max_steps=1,
            mask_ratio_f1=0.5,
            mask_ratio_f2=0.75,
            masking="grid",
            encoder_mode="joint",
            decoder="joint",
            augment="none",
        )
    )
    mc = load_model(result.model_path).config
    assert (mc.mask_ratio_f1, mc.mask_ratio_f2, mc.masking, mc.encoder_mode, mc.decoder) == (
        0.5,
        0.75,
        "grid",
        "joint",
        "joint",
    )


def test_cli_config_file_and_flags(data, tmp_path):
    conf = tmp_path / "run.json"
    conf.write_text(
        json.dumps(
            {
                "model": "tiny",
                "input_size": 32,
                "batch_size": 4,
                "gap": [2, 6],
                "epochs": 2,
                "warmup_epochs": 1,
                "workers": 0,
                "max_steps": 50,
                "device": "cpu",
            }
        )
    )
    out = tmp_path / "run"
    res = CliRunner().invoke(
        cli, ["--config", str(conf), "--data", str(data), "--out", str(out), "--max-steps", "2", "--seed", "3"]
    )
    assert res.exit_code == 0, res.output
    assert "trained to step 2" in res.output
    saved = json.loads((out / "run.json").read_text())["train"]
    assert (saved["max_steps"], saved["seed"], saved["batch_size"], saved["model"]) == (2, 3, 4, "tiny")
    bad = CliRunner().invoke(cli, ["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "error: --data" in bad.output and "no such file" in bad.output
    assert "Traceback" not in bad.output


def test_ddp_two_processes_match_one_process(data, tmp_path):
    """torchrun with 2 CPU processes (gloo) == 1 process with the same global batch as 2 accumulation steps."""
    flags = "--model tiny --input-size 32 --batch-size 4 --gap 2 6 --epochs 10 --warmup-epochs 2 --blr 1e-2 "
    flags += "--workers 0 --max-steps 4 --log-every 1 --device cpu --quiet --vis-every 0"
    args = ["--data", str(data), *flags.split()]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = [*run, "-m", "siammae.cli.train", *args, "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = train(config(data, tmp_path / "single", max_steps=4, accum_steps=2, vis_every=0))
    ddp_log = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert json.loads((tmp_path / "ddp" / "run.json").read_text())["world_size"] == 2
    assert [r["loss"] for r in ddp_log] == pytest.approx(list(single.losses), rel=1e-5)
    a = load_model(tmp_path / "ddp" / "model.pt").state_dict()
    b = load_model(single.model_path).state_dict()
    # all-reduce of gradients vs summed micro-batches round differently: after 4 steps weights agree to ~1e-6 (2e-6
    # seen); a real mismatch (another shard, other masks) shows in the losses above and at 1e-3 here
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_tensorboard_gets_scalars_and_pictures_when_installed(data, tmp_path, monkeypatch):
    """TensorBoard is optional: with a SummaryWriter importable, every log record and picture goes to it too."""
    import types

    calls = []

    class FakeWriter:
        def __init__(self, folder):
            calls.append(("init", folder))

        def add_scalar(self, tag, value, step):
            calls.append((tag, step))

        def add_image(self, tag, img, step, dataformats):
            calls.append((tag, step, img.shape, dataformats))

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    train(config(data, tmp_path, max_steps=2, log_every=2, vis_every=2))
    assert calls[0] == ("init", str(tmp_path / "tb"))
    assert ("train/loss", 2) in calls and ("train/lr", 2) in calls and ("train/samples_per_s", 2) in calls
    assert ("train/reconstruction", 2, (138, 138, 3), "HWC") in calls
    assert calls[-1] == ("close",)


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one(data, tmp_path, monkeypatch):
    """The write of step 2's checkpoint fails (ENOSPC at its rename): one OutputError naming it; step 1's file is
    intact and loads, and no temporary file is left."""
    import errno

    import siammae.io as sio
    from siammae.errors import OutputError

    real = os.replace

    def replace(src, dst, *a, **k):
        if str(dst).endswith("step_00000002.pt"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(sio.os, "replace", replace)
    with pytest.raises(OutputError, match=r"^cannot write .*step_00000002\.pt: No space left on device$"):
        train(config(data, tmp_path, max_steps=3, save_every=1))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001.pt"]
    assert read_checkpoint(tmp_path / "checkpoints" / "step_00000001.pt")["train"]["step"] == 1
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(sio.TMP_PREFIX)]


def test_workers_are_capped_by_the_cores():
    from siammae.train.preflight import capped_workers

    assert capped_workers(8, 1, cores=2) == 1  # the machine: 8 asked, 2 cores
    assert capped_workers(8, 2, cores=2) == 0  # two processes on 2 cores: each loads in its main process
    assert capped_workers(8, 1, cores=16) == 8 and capped_workers(10, 8, cores=16) == 1
    assert capped_workers(0, 1, cores=64) == 0


def test_cpu_refuses_the_paper_defaults_before_building_anything(data, tmp_path, monkeypatch):
    """No CUDA + ViT-S/16 at batch 2048 (both defaults): one line naming CPU-sized settings, nothing written."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    built = []
    monkeypatch.setattr(SiamMAE, "__init__", lambda *a, **k: built.append(1) or None)
    r = CliRunner().invoke(cli, ["--data", str(data), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and r.output.count("error:") == 1, r.output
    assert "no CUDA device" in r.output and "--model tiny --batch-size 16 --total-steps 200" in r.output
    assert built == [] and not (tmp_path / "run").exists()
    # a model or batch size the user chose runs as given (stopped here right after the check, by the patch)
    with pytest.raises(Exception) as e:
        train(TrainConfig(data=(str(data),), out=str(tmp_path / "b"), batch_size=4, device="cpu", quiet=True))
    assert built == [1] and "no CUDA device" not in str(e.value)


def test_progress_bar_shows_pairs_per_second_from_the_first_step(data, tmp_path):
    r = CliRunner().invoke(cli, ["--data", str(data), "--out", str(tmp_path / "run"), "--model", "tiny",
                                 "--input-size", "32", "--batch-size", "4", "--max-steps", "2", "--workers", "8",
                                 "--gap", "2", "6", "--device", "cpu", "--vis-every", "0"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "data worker(s) per process (8 asked," in r.output
    first = next(ln for ln in r.output.replace("\r", "\n").splitlines() if " 1/" in ln and "pairs/s=" in ln)
    assert float(first.split("pairs/s=")[1].split(",")[0].rstrip("]")) > 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    from siammae.train.preflight import capped_workers

    assert run["workers"] == capped_workers(8, 1)


def test_bad_arguments_are_refused_before_torch_is_imported(data, tmp_path):
    """--data missing, --out another run's: refused by the CLI with torch never imported (fast)."""
    code = (
        "import sys\n"
        "from siammae.cli.train import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit as e:\n"
        "    print('exit', e.code, 'torch' in sys.modules)\n"
    )
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step_00000005.pt").write_bytes(b"x")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args, message in (
        (["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")], "--data"),
        (["--data", str(data), "--out", str(tmp_path / "run")], "already holds checkpoints (latest step_00000005.pt)"),
    ):
        p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120)
        assert p.stdout.strip() == "exit 2 False", (p.stdout, p.stderr)
        assert p.stderr.startswith("error: ") and message in p.stderr, p.stderr
