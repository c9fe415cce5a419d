"""siammae-train --init: the encoder starts from pretrained weights (strict), decoder fresh; the init is recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner

from siammae.data.video import write_video
from siammae.errors import CheckpointError
from siammae.model.checkpoint import file_sha256, read_checkpoint
from siammae.train import TrainConfig, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    for i in range(2):
        big = rng.integers(0, 256, (40, 80, 3), dtype=np.uint8)
        write_video(root / f"clip{i}.mp4", (np.ascontiguousarray(big[:, t : t + 48]) for t in range(16)), fps=10)
    return root


def dino_file(path, patch: int = 8):
    """A tiny ViT in DINO's layout (a plain backbone state dict) with the 'tiny' model's encoder shapes at 32 px."""
    torch.manual_seed(1)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=patch, embed_dim=64, depth=2, num_heads=2, num_classes=0
    )
    torch.save(vit.state_dict(), path)
    return vit.state_dict()


def config(data, out, **kw) -> TrainConfig:
    base = dict(data=(str(data),), out=str(out), model="tiny", input_size=32, batch_size=2, repeat=2, gap=(2, 6),
                epochs=1, warmup_epochs=0, lr=1e-12, workers=0, vis_every=0, device="cpu", quiet=True)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_init_from_dino_weights_is_used_and_recorded(data, tmp_path):
    state = dino_file(tmp_path / "dino.pth")
    result = train(config(data, tmp_path / "run", init=str(tmp_path / "dino.pth"), max_steps=1))
    ckpt = read_checkpoint(result.model_path)
    assert ckpt["config"]["pos_embed"] == "learned"  # DINO's table is learned: it keeps training
    encoder = {k.removeprefix("encoder."): v for k, v in ckpt["model"].items() if k.startswith("encoder.")}
    assert set(encoder) == set(state)
    for k, v in state.items():  # lr 1e-12: one step leaves the weights where --init put them
        torch.testing.assert_close(encoder[k], v, rtol=0, atol=1e-6)
    sha = file_sha256(tmp_path / "dino.pth")
    assert ckpt["init"]["sha256"] == sha and ckpt["init"]["weights"] == str(tmp_path / "dino.pth")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["init"]["sha256"] == sha and run["train"]["init"] == str(tmp_path / "dino.pth")


def test_init_from_a_siammae_checkpoint_takes_its_encoder(data, tmp_path):
    first = train(config(data, tmp_path / "a", max_steps=1, lr=1e-2))
    second = train(config(data, tmp_path / "b", init=str(first.model_path), max_steps=1, seed=5))
    a, b = read_checkpoint(first.model_path)["model"], read_checkpoint(second.model_path)["model"]
    torch.testing.assert_close(a["encoder.blocks.0.attn.qkv.weight"], b["encoder.blocks.0.attn.qkv.weight"])
    assert not torch.equal(a["decoder_embed.weight"], b["decoder_embed.weight"])  # the decoder starts fresh


def test_init_shape_mismatch_names_the_keys(data, tmp_path):
    dino_file(tmp_path / "p16.pth", patch=16)  # patch 16 into the patch-8 'tiny' model
    with pytest.raises(CheckpointError, match=r"shape mismatch.*patch_embed\.proj\.weight"):
        train(config(data, tmp_path / "run", init=str(tmp_path / "p16.pth"), max_steps=1))
    assert not (tmp_path / "run" / "model.pt").exists()


def test_cli_init_unknown_name(data, tmp_path, monkeypatch):
    from siammae.cli.train import cli

    monkeypatch.delenv("SIAMMAE_OFFLINE", raising=False)
    out = CliRunner().invoke(
        cli,
        [
            "--data",
            str(data),
            "--out",
            str(tmp_path / "r"),
            "--init",
            "dino-vit8",
            "--model",
            "tiny",
            "--batch-size",
            "2",
        ],
    )
    assert out.exit_code == 2 and out.output.startswith("error: ") and "did you mean dino-vits8" in out.output


def _init_worker(rank: int, store: str, cache: str, log: str) -> None:
    """One of 2 ranks on one machine: --init by name, the download faked (slow, so that a second fetch would
    overlap it) and logged; the name expects the tiny ViT's shapes, so the file is checked as a real one is."""
    import dataclasses
    import os
    import time
    from pathlib import Path

    import torch.distributed as dist

    import siammae.model.named as N
    from siammae.model.hub import file_digests
    from siammae.torchrun import Rank
    from siammae.train.launch import load_init

    os.environ.pop("SIAMMAE_OFFLINE", None)
    os.environ["TORCH_HOME"] = cache
    N.WEIGHTS["dino-vits16"] = dataclasses.replace(N.WEIGHTS["dino-vits16"], embed_dim=64, patch_size=8, depth=2)

    def fake_download(url, dest, progress=True, validate=None, **_):  # hash_prefix, hint
        with open(log, "a") as f:
            f.write(f"{rank}\n")
        time.sleep(0.5)
        tmp = Path(str(dest) + ".part")
        tmp.parent.mkdir(parents=True, exist_ok=True)  # as the real download makes the cache folder
        dino_file(tmp)
        if validate is not None:
            validate(tmp, url)
        os.replace(tmp, dest)
        return file_digests(dest)

    N.download = fake_download
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        init = load_init("dino-vits16", Rank(rank, 2, rank))
        torch.save(init.state, f"{log}.{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_init_by_name_is_fetched_once_per_machine(tmp_path):
    """--init NAME under torchrun: local rank 0 downloads, the other ranks wait and read the same cached file."""
    import torch.multiprocessing as mp

    (tmp_path / "cache").mkdir()
    log = tmp_path / "fetches"
    mp.spawn(_init_worker, args=(str(tmp_path / "store"), str(tmp_path / "cache"), str(log)), nprocs=2, join=True)
    assert log.read_text().split() == ["0"]  # one download, by local rank 0
    a, b = (torch.load(f"{log}.{r}.pt") for r in range(2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
