"""A table of bad inputs and faults over every command: each must end in exit status 2 with one ``error:`` line that
names the file, no traceback, nothing touched outside the output folder, and every file left behind readable.

The inputs are tiny (the ``tiny`` model, 64x64 frames), and most cases fail before the first frame, so the whole
table runs in well under two minutes on a CPU. Faults (a full disk, a read-only file system) are injected by
patching the one rename or append every output goes through (:mod:`siammae.io`).
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import noise_frames
from PIL import Image, ImageDraw, ImageFilter

import siammae
import siammae.io as sio
from siammae.cli.attn import main as attn_main
from siammae.cli.demo import cli as demo_main
from siammae.cli.eval import main as eval_main
from siammae.cli.export import main as export_main
from siammae.cli.prepare import cli as prepare_main
from siammae.cli.track import main as track_main
from siammae.cli.train import cli as train_main
from siammae.data.palette import davis_palette_flat
from siammae.model.checkpoint import read_checkpoint, save_checkpoint
from siammae.model.named import Pin
from siammae.output_folder import OutputFolder

COMMANDS = {
    "track": track_main,
    "eval": eval_main,
    "train": train_main,
    "export": export_main,
    "attn": attn_main,
    "demo": demo_main,
    "prepare": prepare_main,
}
SIZE = 64  # frames are SIZE x SIZE
FRAMES = 3


# ------------------------------------------------------------------------------------------------- the inputs
def _frame(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    rgb = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    rgb[16 + i : 40 + i, 16:40] = (220, 40, 40)  # a square moving down
    return rgb


def _ids(i: int = 0) -> np.ndarray:
    ids = np.zeros((SIZE, SIZE), np.uint8)
    ids[16 + i : 40 + i, 16:40] = 1
    return ids


def _save_p(path: Path, ids: np.ndarray) -> Path:
    im = Image.fromarray(ids)
    im.putpalette(davis_palette_flat())
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """Read-only inputs shared by every case (the table checks that no case changes them)."""
    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "tiny.pt", siammae.create_model("tiny"))
    video = root / "video"
    video.mkdir()
    for i in range(FRAMES):
        Image.fromarray(_frame(i)).save(video / f"{i:05d}.jpg", quality=95)
    mask = _save_p(root / "mask.png", _ids())
    # DAVIS-2017 layout: two sequences of FRAMES frames
    davis = root / "DAVIS"
    for seq in ("alpha", "beta"):
        for i in range(FRAMES):
            (davis / "JPEGImages/480p" / seq).mkdir(parents=True, exist_ok=True)
            Image.fromarray(_frame(i)).save(davis / "JPEGImages/480p" / seq / f"{i:05d}.jpg", quality=95)
            _save_p(davis / "Annotations/480p" / seq / f"{i:05d}.png", _ids(i))
    (davis / "ImageSets/2017").mkdir(parents=True)
    (davis / "ImageSets/2017/val.txt").write_text("alpha\nbeta\n")
    keypoints = root / "kp.json"
    keypoints.write_text(json.dumps({"keypoints": [[20, 20], [30, 30]]}))
    # train data: the frame folder is a video for training
    return {"root": root, "ckpt": ckpt, "video": video, "mask": mask, "davis": davis, "keypoints": keypoints}


# ------------------------------------------------------------------------ issue 29, infrastructure (io, data)
def _wide_video(w, mp):
    """A 5000x16 frame folder of 4 frames and its first mask: at --size 128 a frame is 128x40000 pixels. The work
    check is told of 2 cores, so that the bound does not depend on the machine running the table."""
    noise_frames(w["tmp"] / "wide", 4, 16, 5000, ".png")
    ids = np.zeros((16, 5000), np.uint8)
    ids[4:12, 100:200] = 1
    _save_p(w["tmp"] / "wide.png", ids)
    _two_cores(w, mp)


def _track_work(w, video, mask, size: str) -> list[str]:
    """siammae-track one frame a step (``--chunk 1``) at ``--size size``: the work check's cases."""
    return _argv(video, "--mask", mask, "--ckpt", w["ckpt"], "--size", size, "--device", "cpu", "--chunk", "1", "-q",
                 "--out", w["out"])  # fmt: skip


def _track_stdin(w, *extra) -> list[str]:
    """siammae-track reading its frames from stdin (``-``), ``extra`` before ``--out``."""
    return _argv("-", "--mask", w["mask"], "--ckpt", w["ckpt"], "--size", "64", "--device", "cpu", "-q", *extra,
                 "--out", w["out"])  # fmt: skip


def _two_cores(w, mp):
    import siammae.memory

    mp.setattr(siammae.memory, "_cores", lambda: 2)


def _jhmdb_utf16(w, mp):
    """A JHMDB root whose split file is UTF-16 (starts with the bytes FF FE)."""
    root = w["tmp"] / "J"
    (root / "splits").mkdir(parents=True)
    (root / "splits/walk_test_split1.txt").write_bytes("a.avi 2\n".encode("utf-16"))
    for part in ("Rename_Images", "joint_positions"):
        (root / part).mkdir()


def _full_disk_in_checkpoint(w, mp):
    """Every write into a training checkpoint fails with ENOSPC partway through torch.save (where a real full disk
    fails), not at the rename."""
    real = os.write

    def write(fd, data):
        if "/checkpoints/" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    mp.setattr(sio.os, "write", write)


def _out_is_link(w, mp):
    """--out is a symbolic link to an empty folder of the case (whose snapshot shows any write, or lock, there)."""
    (w["tmp"] / "target").mkdir()
    w["out"].symlink_to(w["tmp"] / "target")


# ------------------------------------------------------------------------------------------------ the table
@dataclass
class Case:
    """One bad input or fault: ``args(w)`` builds the command line in the case's world ``w`` (a dict: the shared
    inputs, ``tmp`` (this case's folder), ``out`` (its output folder)); ``expect`` must be in the error line
    (formatted with ``w``); ``setup(w, monkeypatch)`` prepares files or injects a fault."""

    id: str
    command: str
    args: Callable[[dict], list]
    expect: tuple[str, ...]
    setup: Callable | None = None
    outputs: tuple[str, ...] = field(default=())  # more paths (keys of w) a case may write besides "out"


def _argv(*parts) -> list[str]:
    """A command line as written, every part a string (paths included)."""
    return [str(p) for p in parts]


def _track(w, *extra, mask=True):
    base = [str(w["video"]), "--ckpt", str(w["ckpt"]), "--size", "64", "--device", "cpu", "-q"]
    return base + (["--mask", str(w["mask"])] if mask else []) + [str(e) for e in extra]


def _eval(w, *extra):
    return ["davis", "--root", str(w["davis"]), "--ckpt", str(w["ckpt"]), "--out", str(w["out"]), "--size", "64",
            "--device", "cpu", *[str(e) for e in extra]]  # fmt: skip


def _train(w, *extra):
    return ["--data", str(w["video"]), "--out", str(w["out"]), "--model", "tiny", "--input-size", "32",
            "--batch-size", "2", "--max-steps", "1", "--workers", "0", "--device", "cpu", "--quiet",
            "--gap", "1", "1", *[str(e) for e in extra]]  # fmt: skip


def _env(**variables):
    """torchrun's variables as a (bad) launcher would set them."""

    def setup(w, mp):
        for k, v in variables.items():
            mp.setenv(k, v)

    return setup


def _prepared(damage: Callable[[Path], None]):
    """A prepared set of the shared frame folder at w["tmp"]/set, then ``damage(folder)``."""

    def setup(w, mp):
        from siammae.train.prepare import PrepareSettings, prepare

        prepare([w["video"]], w["tmp"] / "set", PrepareSettings(short_side=32), quiet=True)
        damage(w["tmp"] / "set")

    return setup


def _shard_dotdot(folder: Path) -> None:
    index = json.loads((folder / "index.json").read_text())
    (folder / "index.json").write_text(json.dumps(index | {"shards": ["../../etc/passwd"]}))


def _pickled_offsets(folder: Path) -> None:
    np.save(folder / "offsets.npy", np.array([{"a": 1}] * FRAMES, dtype=object), allow_pickle=True)


def _html_server(w, mp):
    """An HTTP server on 127.0.0.1 that answers every request with a login page (a wrong URL, a proxy)."""
    import http.server
    import threading

    class Login(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<!DOCTYPE html><html><body>Please sign in</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Login)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    w["url"] = f"http://127.0.0.1:{server.server_address[1]}/set/"
    w["_cleanup"] += [server.shutdown, server.server_close]


def _prepare(w, *extra):
    return [str(w["video"]), "--out", str(w["out"]), "--short-side", "32", "--quiet", *[str(e) for e in extra]]


def _export(w, *extra):
    return ["--ckpt", str(w["ckpt"]), "--out", str(w["out"] / "model.onnx"), "--height", "64", "--width", "64",
            "--no-verify", *[str(e) for e in extra]]  # fmt: skip


def _attn(w, *extra, input=None):
    return [str(input or w["video"]), "--ckpt", str(w["ckpt"]), "--size", "64", "--device", "cpu", "-q",
            *[str(e) for e in extra]]  # fmt: skip


def _write(rel: str, content: bytes | str):
    def setup(w, mp):
        path = w["tmp"] / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return setup


def _hostile_ckpt(w, mp):
    """1.7 KB that claims depth 400 x width 8192: must be refused before any model is built."""
    cfg = siammae.create_model("tiny").config.to_dict() | {"depth": 400, "embed_dim": 8192, "num_heads": 64}
    torch.save({"format": "siammae", "version": 1, "kind": "siammae", "config": cfg, "model": {}}, w["tmp"] / "bad.pt")


def _mismatch_ckpt(w, mp):
    """A real state dict with a config that does not describe it."""
    ck = read_checkpoint(w["ckpt"])
    ck["config"] = {**ck["config"], "embed_dim": 128}
    torch.save(ck, w["tmp"] / "bad.pt")


def _truncated_ckpt(w, mp):
    data = Path(w["ckpt"]).read_bytes()
    (w["tmp"] / "bad.pt").write_bytes(data[: len(data) // 2])


def _tensor_ckpt(w, mp):
    torch.save(torch.zeros(3), w["tmp"] / "bad.pt")


def _nan_ckpt(w, mp):
    """A siammae checkpoint whose weights hold a NaN (a diverged run): it ran to `complete`, every frame after the
    first all background (issue 29)."""
    ck = read_checkpoint(w["ckpt"])
    ck["model"]["encoder.blocks.1.attn.qkv.weight"][0, 0] = float("nan")
    torch.save(ck, w["tmp"] / "bad.pt")


def _jpeg_mask(w, mp):
    Image.fromarray(_ids() * 200).convert("RGB").save(w["tmp"] / "m.jpg", quality=80)


def _blended_mask(w, mp):
    im = Image.new("RGB", (SIZE, SIZE))
    d = ImageDraw.Draw(im)
    d.ellipse((8, 8, 40, 40), fill=(200, 0, 0))
    d.rectangle((44, 20, 60, 60), fill=(0, 200, 0))
    im.filter(ImageFilter.GaussianBlur(1.5)).save(w["tmp"] / "m.png")


def _dup_frames(w, mp):
    v = w["tmp"] / "v"
    v.mkdir()
    for i in range(2):
        Image.fromarray(_frame(i)).save(v / f"{i:05d}.jpg")
    Image.fromarray(_frame(1)).save(v / "00001.png")


def _mask_dir_dups(w, mp):
    d = w["tmp"] / "md"
    _save_p(d / "00000.png", _ids())
    Image.fromarray(_ids() * 255).save(d / "00000.bmp")


def _planted_link(name: str, target_is_dir: bool = False):
    def setup(w, mp):
        victim = w["tmp"] / "victim"
        if target_is_dir:
            victim.mkdir()
        else:
            victim.write_text("precious\n")
        w["out"].mkdir(parents=True, exist_ok=True)
        (w["out"] / name).symlink_to(victim)

    return setup


def _locked(w, mp):
    claim = OutputFolder(w["out"]).open()  # another run holds --out for the whole case
    w["_cleanup"].append(claim.close)


def _fail_replace(suffix: str, err: int = errno.ENOSPC):
    """Every atomic write of a file ending in ``suffix`` fails at its rename, as on a full disk."""

    def setup(w, mp):
        real = os.replace

        def replace(src, dst, *a, **k):
            if str(dst).endswith(suffix):
                raise OSError(err, os.strerror(err), str(dst))
            return real(src, dst, *a, **k)

        mp.setattr(sio.os, "replace", replace)

    return setup


def _full_append(w, mp):
    """Appends (keypoints.jsonl, log.jsonl) go to /dev/full: every flush fails with ENOSPC."""
    real = sio.open_append

    def to_full(path, truncate=False):
        real(path, truncate).close()  # the file exists, as it would
        return open("/dev/full", "a")  # noqa: SIM115

    import siammae.data.keypoints as kp

    mp.setattr(kp, "open_append", to_full)


# ---------------------------------------------------------------------------------------- track: batch helpers
def _manifest(rows: list[dict], name: str = "m.jsonl", raw: str | None = None):
    """A manifest in the case's folder: JSON Lines rows over the shared video and mask (``video`` / ``mask`` keys
    default to them), or ``raw`` text."""

    def setup(w, mp):
        if raw is not None:
            text = raw
        else:
            text = "".join(json.dumps({"video": str(w["video"]), "mask": str(w["mask"]), **r}) + "\n" for r in rows)
        (w["tmp"] / name).write_text(text)

    return setup


def _batch(w, *extra, manifest="m.jsonl"):
    return ["--manifest", str(w["tmp"] / manifest), "--ckpt", str(w["ckpt"]), "--out", str(w["out"]), "--size", "64",
            "--device", "cpu", "-q", *[str(e) for e in extra]]  # fmt: skip


def _both(*setups):
    def setup(w, mp):
        for s in setups:
            s(w, mp)

    return setup


def _done_elsewhere(name: str, partial: bool = False):
    """``out/<name>`` (or ``out/.<name>.partial``) is a link to a folder outside --out whose report says complete."""

    def setup(w, mp):
        victim = w["tmp"] / "victim_run"
        victim.mkdir()
        (victim / "report.json").write_text('{"status": "complete", "frames": 3}\n')
        w["out"].mkdir(parents=True, exist_ok=True)
        (w["out"] / (f".{name}.partial" if partial else name)).symlink_to(victim)

    return setup


def _eval_list(text: str):
    """A DAVIS root (linking the shared frames) whose val list is ``text``."""

    def setup(w, mp):
        root = w["tmp"] / "D"
        for part in ("JPEGImages", "Annotations"):
            (root / part).mkdir(parents=True)
            (root / part / "480p").symlink_to(w["davis"] / part / "480p")
        (root / "ImageSets/2017").mkdir(parents=True)
        (root / "ImageSets/2017/val.txt").write_text(text)
        w["davis"] = root

    return setup


def _eval_missing_annotation(w, mp):
    root = w["tmp"] / "D"
    for part in ("JPEGImages", "Annotations"):
        for seq in ("alpha",):
            src = w["davis"] / part / "480p" / seq
            dst = root / part / "480p" / seq
            dst.mkdir(parents=True)
            for f in sorted(src.iterdir())[: 2 if part == "Annotations" else None]:
                (dst / f.name).write_bytes(f.read_bytes())
    (root / "ImageSets/2017").mkdir(parents=True)
    (root / "ImageSets/2017/val.txt").write_text("alpha\n")
    w["davis"] = root


def _results(w, mp, size=SIZE):
    res = w["tmp"] / "res" / "alpha"
    for i in range(FRAMES):
        _save_p(res / f"{i:05d}.png", np.zeros((size, size), np.uint8))


def _torn_log_and_symlink(w, mp):
    w["out"].mkdir(parents=True)
    (w["out"] / "log.jsonl").symlink_to(w["tmp"] / "victim")
    (w["tmp"] / "victim").write_text('{"step": 1}\n')


# ------------------------------------------------------------------------------- weights and checkpoints (issue 19)
def _ckpt_named(w, name="dino-vits16"):
    return [str(w["video"]), "--mask", str(w["mask"]), "--ckpt", name, "--size", "64", "--device", "cpu", "-q",
            "--out", str(w["out"])]  # fmt: skip


def _weights_server(fault=None, timeout="10", name="dino-vits16", loop=False, placed=None, pin=None, trickle_s=0.4):
    """Weights by name from a local server (tests/weight_server.py). The cache is under --out, whose files the table
    reads back: a refused download kept there (torn, empty, an HTML page) or a temp file left fails the case. A file
    ``placed`` by hand sits in a cache outside --out, which must stay as it was (no sha256 recorded for it)."""

    def setup(w, mp):
        from weight_server import Server, as_tiny, tiny_vit, to_bytes

        named = as_tiny(mp, name, **({"pin": pin} if pin is not None else {}))
        srv = Server(trickle_s=trickle_s)  # a byte every 0.4 s: no single read waits long, the total does
        w["_cleanup"].append(srv.close)
        srv.files[named.url_path] = to_bytes(tiny_vit().state_dict())
        if fault is not None:
            srv.faults[named.url_path] = fault
        if loop:
            srv.redirects[named.url_path], srv.redirects["/b"] = "/b", named.url_path
        home = w["tmp" if placed is not None else "out"] / "torch"
        if placed is not None:
            (home / "hub" / "checkpoints").mkdir(parents=True)
            (home / "hub" / "checkpoints" / named.filename).write_bytes(placed)
        mp.setenv("TORCH_HOME", str(home))
        mp.setenv("SIAMMAE_WEIGHTS_URL_BASE", srv.base)
        mp.setenv("SIAMMAE_DOWNLOAD_TIMEOUT", timeout)
        mp.delenv("SIAMMAE_OFFLINE", raising=False)
        mp.delenv("HF_HUB_OFFLINE", raising=False)

    return setup


def _foreign_ckpt(change):
    """A timm ViT state dict (DINO's layout) with one fault."""

    def setup(w, mp):
        import timm

        state = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, depth=1).state_dict()
        change(state)
        torch.save(state, w["tmp"] / "bad.pth")

    return setup


def _foreign(w):
    return _ckpt_named(w, str(w["tmp"] / "bad.pth"))


def _eval_binary_masks(w, mp):
    """A DAVIS-2017 layout whose annotations are DAVIS-2016 masks (mode L, values {0, 255})."""
    root = w["tmp"] / "D"
    for i in range(FRAMES):
        (root / "JPEGImages/480p/alpha").mkdir(parents=True, exist_ok=True)
        (root / "Annotations/480p/alpha").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_frame(i)).save(root / f"JPEGImages/480p/alpha/{i:05d}.jpg", quality=95)
        Image.fromarray(_ids(i) * 255, mode="L").save(root / f"Annotations/480p/alpha/{i:05d}.png")
    (root / "ImageSets/2017").mkdir(parents=True)
    (root / "ImageSets/2017/val.txt").write_text("alpha\n")
    w["davis"] = root


def _bomb(rel: str):
    """A PNG at ``rel`` whose header claims 60000x60000 pixels (valid signature and IHDR, no pixel data): Pillow's
    decompression-bomb check refuses it before decoding."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    return _write(rel, png)


def _eval_bomb_annotation(w, mp):
    """A DAVIS root whose sequence alpha has a 60000x60000 first annotation."""
    root = w["tmp"] / "D"
    for part in ("JPEGImages", "Annotations"):
        src = w["davis"] / part / "480p" / "alpha"
        dst = root / part / "480p" / "alpha"
        dst.mkdir(parents=True)
        for f in sorted(src.iterdir()):
            (dst / f.name).write_bytes(f.read_bytes())
    (root / "ImageSets/2017").mkdir(parents=True)
    (root / "ImageSets/2017/val.txt").write_text("alpha\n")
    _bomb("D/Annotations/480p/alpha/00000.png")(w, mp)
    w["davis"] = root


# --------------------------------------------------------------- issue 29: checks before the weights and the model
def _no_weights(w, mp):
    """No --ckpt, downloads off, an empty cache and no shipped model: the default weights cannot be had, so a check
    that ran after the weights were resolved would report the offline-weights error instead of the case's own."""

    mp.setenv("SIAMMAE_OFFLINE", "1")
    mp.setenv("TORCH_HOME", str(w["out"] / "torch"))
    from siammae.model import packaged

    mp.setattr(packaged, "shipped_file", lambda: w["out"] / "absent" / "siammae-cpu.safetensors")


def _no_gpu(w, mp):
    """The machine has no GPU driver (as this CI machine; patched so that the row means the same on a GPU host)."""
    _no_weights(w, mp)
    mp.setattr("siammae.model.load.gpu_absent", lambda: "this machine has no GPU driver")


def _later_mask(write):
    """--mask-dir md: frame 0's good mask, and frame 1's written by ``write(folder)``; no --ckpt (see _no_weights)."""

    def setup(w, mp):
        _no_weights(w, mp)
        _save_p(w["tmp"] / "md" / "00000.png", _ids())
        write(w["tmp"] / "md")

    return setup


def _sixteen_bit_300(folder):
    ids = _ids(1).astype(np.uint16) * 300
    Image.fromarray(ids).save(folder / "00001.png")  # uint16 -> a 16-bit greyscale PNG (mode I;16)


def _small_memory(w, mp):
    """1 GB of memory: the estimate of a 4000-pixel input refuses it (the row does not depend on the host's RAM)."""
    import siammae.memory

    mp.setattr(siammae.memory, "available_bytes", lambda device="cpu": 10**9)


def _track_default(w, *extra):
    """siammae-track with no --ckpt (the default weights)."""
    return [str(w["video"]), "--size", "64", "--device", "cpu", "-q", "--out", str(w["out"]), *[str(e) for e in extra]]


CASES = [
    # --------------------------------------------------------------------------------------------- track
    Case(
        "track-video-missing",
        "track",
        lambda w: [
            str(w["tmp"] / "nope.mp4"),
            "--mask",
            str(w["mask"]),
            "--ckpt",
            str(w["ckpt"]),
            "--out",
            str(w["out"]),
        ],
        ("nope.mp4",),
    ),  # fmt: skip
    Case(
        "track-video-not-video",
        "track",
        lambda w: [str(w["tmp"] / "a.txt"), "--mask", str(w["mask"]), "--ckpt", str(w["ckpt"]), "--out", str(w["out"])],
        ("a.txt",),
        _write("a.txt", "hello"),
    ),  # fmt: skip
    Case(
        "track-mask-missing",
        "track",
        lambda w: _track(w, "--out", w["out"], mask=False) + ["--mask", str(w["tmp"] / "none.png")],
        ("none.png",),
    ),  # fmt: skip
    Case(
        "track-mask-jpeg",
        "track",
        lambda w: _track(w, "--out", w["out"], mask=False) + ["--mask", str(w["tmp"] / "m.jpg")],
        ("m.jpg", "JPEG"),
        _jpeg_mask,
    ),  # fmt: skip
    Case(
        "track-mask-antialiased",
        "track",
        lambda w: _track(w, "--out", w["out"], mask=False) + ["--mask", str(w["tmp"] / "m.png")],
        ("m.png", "anti-aliased"),
        _blended_mask,
    ),  # fmt: skip
    Case(
        "track-mask-empty",
        "track",
        lambda w: _track(w, "--out", w["out"], mask=False) + ["--mask", str(w["tmp"] / "e.png")],
        ("e.png", "empty"),
        lambda w, mp: _save_p(w["tmp"] / "e.png", np.zeros((SIZE, SIZE), np.uint8)),
    ),  # fmt: skip
    Case(
        "track-mask-aspect",
        "track",
        lambda w: _track(w, "--out", w["out"], mask=False) + ["--mask", str(w["tmp"] / "e.png")],
        ("e.png", "aspect"),
        lambda w, mp: _save_p(w["tmp"] / "e.png", np.ones((SIZE, 2 * SIZE), np.uint8)),
    ),  # fmt: skip
    Case(
        "track-mask-garbage",
        "track",
        lambda w: _track(w, "--out", w["out"], mask=False) + ["--mask", str(w["tmp"] / "g.png")],
        ("g.png",),
        _write("g.png", b"\x89PNG not really"),
    ),  # fmt: skip
    Case(
        "track-dup-frames",
        "track",
        lambda w: [str(w["tmp"] / "v"), "--mask", str(w["mask"]), "--ckpt", str(w["ckpt"]), "--out", str(w["out"])],
        ("00001.jpg", "00001.png"),
        _dup_frames,
    ),  # fmt: skip
    Case(
        "track-corrupt-frame",
        "track",
        lambda w: [str(w["tmp"] / "v"), "--mask", str(w["mask"]), "--ckpt", str(w["ckpt"]), "--out", str(w["out"])],
        ("00000.jpg",),
        _write("v/00000.jpg", b"\xff\xd8junk"),
    ),  # fmt: skip
    Case(
        "track-mask-dir-dups",
        "track",
        lambda w: _track(w, "--out", w["out"], mask=False) + ["--mask-dir", str(w["tmp"] / "md")],
        ("md", "00000"),
        _mask_dir_dups,
    ),  # fmt: skip
    Case(
        "track-ckpt-missing",
        "track",
        lambda w: [
            str(w["video"]),
            "--mask",
            str(w["mask"]),
            "--ckpt",
            str(w["tmp"] / "no.pt"),
            "--out",
            str(w["out"]),
        ],
        ("no.pt",),
    ),  # fmt: skip
    Case(
        "track-ckpt-empty",
        "track",
        lambda w: [
            str(w["video"]),
            "--mask",
            str(w["mask"]),
            "--ckpt",
            str(w["tmp"] / "bad.pt"),
            "--out",
            str(w["out"]),
        ],
        ("bad.pt", "empty"),
        _write("bad.pt", b""),
    ),  # fmt: skip
    Case(
        "track-ckpt-garbage",
        "track",
        lambda w: [
            str(w["video"]),
            "--mask",
            str(w["mask"]),
            "--ckpt",
            str(w["tmp"] / "bad.pt"),
            "--out",
            str(w["out"]),
        ],
        ("bad.pt",),
        _write("bad.pt", b"garbage" * 9),
    ),  # fmt: skip
    Case(
        "track-ckpt-hostile",
        "track",
        lambda w: [
            str(w["video"]),
            "--mask",
            str(w["mask"]),
            "--ckpt",
            str(w["tmp"] / "bad.pt"),
            "--out",
            str(w["out"]),
        ],
        ("bad.pt", "depth"),
        _hostile_ckpt,
    ),  # fmt: skip
    Case(
        "track-ckpt-mismatch",
        "track",
        lambda w: [
            str(w["video"]),
            "--mask",
            str(w["mask"]),
            "--ckpt",
            str(w["tmp"] / "bad.pt"),
            "--out",
            str(w["out"]),
        ],
        ("bad.pt", "shape"),
        _mismatch_ckpt,
    ),  # fmt: skip
    Case(
        "track-ckpt-truncated",
        "track",
        lambda w: [
            str(w["video"]),
            "--mask",
            str(w["mask"]),
            "--ckpt",
            str(w["tmp"] / "bad.pt"),
            "--out",
            str(w["out"]),
        ],
        ("bad.pt",),
        _truncated_ckpt,
    ),  # fmt: skip
    Case(
        "track-ckpt-tensor",
        "track",
        lambda w: [
            str(w["video"]),
            "--mask",
            str(w["mask"]),
            "--ckpt",
            str(w["tmp"] / "bad.pt"),
            "--out",
            str(w["out"]),
        ],
        ("bad.pt",),
        _tensor_ckpt,
    ),  # fmt: skip
    Case(
        "track-ckpt-nan",
        "track",
        lambda w: _ckpt_named(w, str(w["tmp"] / "bad.pt")),
        ("bad.pt", "encoder.blocks.1.attn.qkv.weight holds NaN"),
        _nan_ckpt,
    ),
    Case(
        "ckpt-foreign-inf",
        "track",
        _foreign,
        ("bad.pth", "blocks.0.norm1.weight holds inf"),
        _foreign_ckpt(lambda s: s["blocks.0.norm1.weight"].fill_(float("inf"))),
    ),
    # --------------------------------------------------------------------------- weights and checkpoints (issue 19)
    Case(
        "weights-download-cut",
        "track",
        _ckpt_named,
        ("dino_deitsmall16_pretrain.pth", "truncated", "nothing was kept"),
        _weights_server("cut"),
    ),
    Case("weights-download-empty", "track", _ckpt_named, ("empty body", "nothing was kept"), _weights_server("empty")),
    Case("weights-download-html", "track", _ckpt_named, ("HTML page", "nothing was kept"), _weights_server("html")),
    Case(
        "weights-download-trickle",
        "track",
        _ckpt_named,
        ("SIAMMAE_DOWNLOAD_TIMEOUT=1 s", "nothing was kept"),
        _weights_server("trickle", timeout="1"),
    ),
    Case("weights-redirect-loop", "track", _ckpt_named, ("redirect loop",), _weights_server(loop=True)),
    Case(
        "weights-timeout-nan",
        "track",
        _ckpt_named,
        ("SIAMMAE_DOWNLOAD_TIMEOUT='nan'", "finite"),
        _weights_server(timeout="nan"),
    ),
    Case(
        "weights-timeout-inf",
        "track",
        _ckpt_named,
        ("SIAMMAE_DOWNLOAD_TIMEOUT='inf'", "finite"),
        _weights_server(timeout="inf"),
    ),
    Case(
        "weights-placed-html",
        "track",
        _ckpt_named,
        ("HTML page", "delete {tmp}/torch/hub/checkpoints/dino_"),
        _weights_server(placed=b"<!DOCTYPE html><html>sign in</html>"),
    ),
    Case(
        "weights-pin-mismatch",
        "track",
        lambda w: _ckpt_named(w, "mae-vitb16"),
        ("md5 prefix 8cad7c", "nothing"),
        _weights_server(name="mae-vitb16", pin=Pin("md5", "8cad7c", "MAE's README")),
    ),
    Case(
        "weights-train-init-cut",
        "train",
        lambda w: _train(w, "--init", "dino-vits16"),
        ("nothing was kept",),
        _weights_server("cut"),
    ),
    Case("ckpt-name-300-chars", "track", lambda w: _ckpt_named(w, "a" * 300), ("300 characters", "neither a file")),
    Case(
        "ckpt-foreign-no-mlp",
        "track",
        _foreign,
        ("bad.pth", "blocks.0.mlp.fc1.weight"),
        _foreign_ckpt(lambda s: s.pop("blocks.0.mlp.fc1.weight")),
    ),
    Case(
        "ckpt-foreign-patch-1d",
        "track",
        _foreign,
        ("bad.pth", "patch_embed.proj.weight has shape (384,)"),
        _foreign_ckpt(lambda s: s.update({"patch_embed.proj.weight": torch.zeros(384)})),
    ),
    Case(
        "ckpt-foreign-patch-empty",
        "track",
        _foreign,
        ("bad.pth", "patch_embed.proj.weight has shape (0, 3, 16, 16)"),
        _foreign_ckpt(lambda s: s.update({"patch_embed.proj.weight": torch.zeros(0, 3, 16, 16)})),
    ),
    # --------------------------------------------------------------------------------------------- (end issue 19)
    Case(
        "track-overlay-gif",
        "track",
        lambda w: _track(w, "--out", w["out"], "--overlay", w["out"] / "o.gif"),
        ("o.gif", ".mp4"),
    ),  # fmt: skip
    Case(
        "track-overlay-webm",
        "track",
        lambda w: _track(w, "--out", w["out"], "--overlay", w["out"] / "o.webm"),
        ("o.webm",),
    ),  # fmt: skip
    Case(
        "track-overlay-noext",
        "track",
        lambda w: _track(w, "--out", w["out"], "--overlay", w["out"] / "o"),
        ("--overlay",),
    ),  # fmt: skip
    Case(
        "track-size-huge",
        "track",
        lambda w: [
            str(w["video"]),
            "--ckpt",
            str(w["ckpt"]),
            "--size",
            "4000",
            "--mask",
            str(w["mask"]),
            "--out",
            str(w["out"]),
            "-q",
        ],
        ("video", "needs about"),
        _small_memory,
    ),  # fmt: skip
    Case("track-out-is-file", "track", lambda w: _track(w, "--out", w["tmp"] / "f"), ("f",), _write("f", "x")),
    Case(
        "track-out-not-empty",
        "track",
        lambda w: _track(w, "--out", w["out"]),
        ("out", "not empty"),
        lambda w, mp: _save_p(w["out"] / "old.png", _ids()),
    ),  # fmt: skip
    Case(
        "track-overwrite-foreign",
        "track",
        lambda w: _track(w, "--out", w["out"], "--overwrite"),
        ("out", "notes.txt"),
        _write("out/notes.txt", "mine"),
    ),  # fmt: skip
    Case(
        "track-out-linked-folder",
        "track",
        lambda w: _track(w, "--out", w["out"], "--overwrite"),
        ("sub", "symbolic link"),
        _planted_link("sub", target_is_dir=True),
    ),  # fmt: skip
    Case(
        "track-out-locked", "track", lambda w: _track(w, "--out", w["out"]), ("out", "another siammae run"), _locked
    ),  # fmt: skip
    Case(
        "track-report-exists",
        "track",
        lambda w: _track(w, "--report", w["tmp"] / "r.json"),
        ("r.json", "exists"),
        _write("r.json", "{}"),
    ),  # fmt: skip
    Case(
        "track-keypoints-missing",
        "track",
        lambda w: _track(w, "--out", w["out"], "--keypoints", w["tmp"] / "k.json", mask=False),
        ("k.json",),
    ),  # fmt: skip
    Case(
        "track-keypoints-outside",
        "track",
        lambda w: _track(w, "--out", w["out"], "--keypoints", w["tmp"] / "k.json", mask=False),
        ("k.json", "outside"),
        _write("k.json", json.dumps({"keypoints": [[500, 5]]})),
    ),  # fmt: skip
    Case(
        "track-keypoints-all-null",
        "track",
        lambda w: _track(w, "--out", w["out"], "--keypoints", w["tmp"] / "k.json", mask=False),
        ("k.json", "null"),
        _write("k.json", json.dumps({"keypoints": [None, None]})),
    ),  # fmt: skip
    Case(
        "track-keypoints-bad-json",
        "track",
        lambda w: _track(w, "--out", w["out"], "--keypoints", w["tmp"] / "k.json", mask=False),
        ("k.json",),
        _write("k.json", "{not json"),
    ),  # fmt: skip
    Case(
        "track-encoder-missing",
        "track",
        lambda w: [
            str(w["video"]),
            "--mask",
            str(w["mask"]),
            "--encoder",
            str(w["tmp"] / "m.onnx"),
            "--out",
            str(w["out"]),
        ],
        ("m.onnx",),
    ),  # fmt: skip
    Case(
        "track-disk-full-masks",
        "track",
        lambda w: _track(w, "--out", w["out"]),
        ("00000.png", "No space left"),
        _fail_replace(".png"),
    ),  # fmt: skip
    Case(
        "track-disk-full-report",
        "track",
        lambda w: _track(w, "--out", w["out"], "--report", w["out"] / "r.json"),
        ("r.json", "No space left"),
        _fail_replace(".json"),
    ),  # fmt: skip
    Case(
        "track-readonly-overlay",
        "track",
        lambda w: _track(w, "--out", w["out"], "--overlay", w["out"] / "o.mp4"),
        ("o.mp4", "Read-only"),
        _fail_replace(".mp4", errno.EROFS),
    ),  # fmt: skip
    Case(
        "track-disk-full-keypoints",
        "track",
        lambda w: _track(w, "--out", w["out"], "--keypoints", w["keypoints"], mask=False),
        ("keypoints.jsonl", "No space left"),
        _full_append,
    ),  # fmt: skip
    # ------------------------------------------------------------------------------------- track: batch
    Case(
        "track-batch-locked",
        "track",
        lambda w: _batch(w),
        ("out", "another siammae run"),
        _both(_manifest([{}]), _locked),
    ),  # fmt: skip
    Case(
        "track-batch-reserved-name",
        "track",
        lambda w: _batch(w),
        ("summary.json", "the batch writes itself"),
        _manifest([{"out": "summary.json"}]),
    ),  # fmt: skip
    Case(
        "track-batch-name-newline",
        "track",
        lambda w: _batch(w),
        ("control character",),
        _manifest([{"out": "a\nb"}]),
    ),  # fmt: skip
    Case(
        "track-batch-name-pipe",
        "track",
        lambda w: _batch(w, manifest="m.csv"),
        ("'a|b'", "'|'"),
        lambda w, mp: (w["tmp"] / "m.csv").write_text(f"video,mask,out\n{w['video']},{w['mask']},a|b\n"),
    ),  # fmt: skip
    Case(
        "track-batch-nul-in-jsonl",
        "track",
        lambda w: _batch(w),
        ("m.jsonl", "NUL"),
        _manifest([{"video": "clip\u0000.mp4"}]),
    ),  # fmt: skip
    Case(
        "track-batch-deep-jsonl",
        "track",
        lambda w: _batch(w),
        ("m.jsonl", "line 1", "nested too deeply"),
        _manifest([], raw="[" * 200_000 + "\n"),
    ),  # fmt: skip
    Case(
        "track-batch-planted-link",
        "track",
        lambda w: _batch(w),
        ("video", "symbolic link"),
        _both(_manifest([{}]), _done_elsewhere("video")),
    ),  # fmt: skip
    Case(
        "track-batch-planted-partial-link",
        "track",
        lambda w: _batch(w, "--overwrite"),
        (".video.partial", "symbolic link"),
        _both(_manifest([{}]), _done_elsewhere("video", partial=True)),
    ),  # fmt: skip
    Case(
        "track-batch-overwrite-foreign",
        "track",
        lambda w: _batch(w, "--overwrite"),
        ("out", "notes.txt", "does not write"),
        _both(_manifest([{}]), _write("out/notes.txt", "mine")),
    ),  # fmt: skip
    Case(
        "track-batch-video-folder-foreign",
        "track",
        lambda w: _batch(w),
        ("video", "holds files a batch does not write"),
        _both(_manifest([{}]), _write("out/video/notes.txt", "mine")),
    ),  # fmt: skip
    Case(
        "track-batch-out-is-file",
        "track",
        lambda w: ["--manifest", str(w["tmp"] / "m.jsonl"), "--ckpt", str(w["ckpt"]), "--out", str(w["tmp"] / "f")],
        ("f", "not a folder"),
        _both(_manifest([{}]), _write("f", "x")),
    ),  # fmt: skip
    # ---------------------------------------------------------------------------------------------- eval
    Case(
        "eval-root-missing",
        "eval",
        lambda w: ["davis", "--root", str(w["tmp"] / "X"), "--ckpt", str(w["ckpt"]), "--out", str(w["out"])],
        ("X",),
    ),  # fmt: skip
    Case("eval-list-dotdot", "eval", _eval, ("val.txt", "../../escape"), _eval_list("alpha\n../../escape\n")),
    Case("eval-list-absolute", "eval", _eval, ("val.txt", "/tmp/abs"), _eval_list("/tmp/abs\n")),
    Case("eval-list-slash", "eval", _eval, ("val.txt", "a/b"), _eval_list("a/b\n")),
    Case("eval-list-empty", "eval", _eval, ("val.txt", "empty"), _eval_list("\n\n")),
    Case("eval-sequence-not-listed", "eval", lambda w: _eval(w, "--sequences", "gamma"), ("--sequences", "gamma")),
    Case("eval-sequence-dotdot", "eval", lambda w: _eval(w, "--sequences", ".."), ("--sequences", "..")),
    Case(
        "eval-wrong-year", "eval", lambda w: _eval(w, "--year", "2016", "--sequences", "alpha"), ("2016", "val.txt")
    ),  # fmt: skip
    Case("eval-missing-annotation", "eval", _eval, ("00002",), _eval_missing_annotation),
    Case("eval-out-linked", "eval", _eval, ("predictions", "symbolic link"), _planted_link("predictions", True)),
    Case("eval-out-locked", "eval", _eval, ("out", "another siammae run"), _locked),
    Case(
        "eval-out-is-file",
        "eval",
        lambda w: _eval(w)[:-6] + ["--out", str(w["tmp"] / "f"), "--size", "64", "--device", "cpu"],
        ("f",),
        _write("f", "x"),
    ),  # fmt: skip
    Case("eval-disk-full-scores", "eval", _eval, ("alpha.json", "No space left"), _fail_replace("alpha.json")),
    Case(
        "eval-ckpt-hostile",
        "eval",
        lambda w: _eval(w)[:3] + ["--ckpt", str(w["tmp"] / "bad.pt"), "--out", str(w["out"])],
        ("bad.pt", "depth"),
        _hostile_ckpt,
    ),  # fmt: skip
    Case(
        "eval-results-missing",
        "eval",
        lambda w: ["davis", "--root", str(w["davis"]), "--results", str(w["tmp"] / "res"), "--out", str(w["out"])],
        ("res",),
    ),  # fmt: skip
    Case(
        "eval-results-wrong-size",
        "eval",
        lambda w: [
            "davis",
            "--root",
            str(w["davis"]),
            "--results",
            str(w["tmp"] / "res"),
            "--out",
            str(w["out"]),
            "--sequences",
            "alpha",
        ],
        ("00001.png",),
        lambda w, mp: _results(w, mp, size=32),
    ),  # fmt: skip
    Case(
        "eval-vip-list-dotdot",
        "eval",
        lambda w: ["vip", "--root", str(w["tmp"] / "V"), "--ckpt", str(w["ckpt"]), "--out", str(w["out"])],
        ("val_videos.txt", ".."),
        _write("V/lists/val_videos.txt", "..\n"),
    ),  # fmt: skip
    Case(
        "eval-jhmdb-root-missing",
        "eval",
        lambda w: ["jhmdb", "--root", str(w["tmp"] / "J"), "--ckpt", str(w["ckpt"]), "--out", str(w["out"])],
        ("J",),
    ),  # fmt: skip
    Case(
        "eval-2016-mask-as-2017",
        "eval",
        lambda w: _eval(w, "--year", "2017"),
        ("alpha/00000.png", "DAVIS sequence alpha", "--year 2016"),
        _eval_binary_masks,
    ),  # fmt: skip
    # --------------------------------------------------------------------------------------------- train
    Case("train-lr-nan", "train", lambda w: _train(w, "--lr", "nan"), ("lr", "finite")),
    Case("train-blr-inf", "train", lambda w: _train(w, "--blr", "inf"), ("blr", "finite")),
    Case(
        "train-input-size-huge",
        "train",
        lambda w: _train(w)[:8] + ["--input-size", "1000000"] + _train(w)[10:],
        ("input_size", "4096"),
    ),  # fmt: skip
    Case(
        "train-data-missing",
        "train",
        lambda w: ["--data", str(w["tmp"] / "nowhere"), "--out", str(w["out"])],
        ("nowhere",),
    ),  # fmt: skip
    Case(
        "train-config-bad-json",
        "train",
        lambda w: _train(w, "--config", w["tmp"] / "c.json"),
        ("c.json",),
        _write("c.json", "{oops"),
    ),  # fmt: skip
    Case("train-log-symlink", "train", _train, ("log.jsonl", "symbolic link"), _torn_log_and_symlink),
    Case("train-out-locked", "train", _train, ("out", "another siammae run"), _locked),
    Case(
        "train-out-is-file",
        "train",
        lambda w: _train(w)[:2] + ["--out", str(w["tmp"] / "f")] + _train(w)[4:],
        ("f",),
        _write("f", "x"),
    ),  # fmt: skip
    Case("train-disk-full-checkpoint", "train", _train, ("No space left",), _fail_replace(".pt")),
    # ------------------------------------------------------------ train: torchrun environment, prepared data, CPU
    Case(
        "train-env-rank-abc",
        "train",
        _train,
        ("RANK='abc'", "valid: 0..1"),
        _env(RANK="abc", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500"),
    ),
    Case(
        "train-env-rank-outside",
        "train",
        _train,
        ("RANK=2", "valid: 0..1 (WORLD_SIZE=2)"),
        _env(RANK="2", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500"),
    ),
    Case(
        "train-env-local-rank-bad",
        "train",
        _train,
        ("LOCAL_RANK='gpu0'",),
        _env(RANK="0", WORLD_SIZE="2", LOCAL_RANK="gpu0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500"),
    ),
    Case(
        "train-env-no-master-port",
        "train",
        _train,
        ("MASTER_PORT is not set",),
        _env(RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1"),
    ),
    Case(
        "train-prepared-shard-dotdot",
        "train",
        lambda w: _train(w)[2:] + ["--data", str(w["tmp"] / "set")],
        ("index.json", "'../../etc/passwd' is not a plain file name"),
        _prepared(_shard_dotdot),
    ),
    Case(
        "train-prepared-pickle",
        "train",
        lambda w: _train(w)[2:] + ["--data", str(w["tmp"] / "set")],
        ("offsets.npy", "not a numpy integer array"),
        _prepared(_pickled_offsets),
    ),
    Case(
        "train-prepared-url-html",
        "train",
        lambda w: _train(w)[2:] + ["--data", w["url"]],
        ("{url}index.json", "is an HTML page"),
        _html_server,
    ),
    Case(
        "train-cpu-paper-defaults",
        "train",
        lambda w: ["--data", str(w["video"]), "--out", str(w["out"]), "--device", "cpu", "--quiet"],
        ("no CUDA device", "--model tiny --batch-size 16 --total-steps 200"),
    ),
    # ------------------------------------------------------------------------------------------ prepare
    Case("prepare-input-missing", "prepare", lambda w: [str(w["tmp"] / "nope"), "--out", str(w["out"])], ("nope",)),
    Case("prepare-quality-0", "prepare", lambda w: _prepare(w, "--quality", "0"), ("--quality 0",)),
    Case(
        "prepare-out-is-file",
        "prepare",
        lambda w: _prepare(w)[:1] + ["--out", str(w["tmp"] / "f")],
        ("f", "not a folder"),
        _write("f", "x"),
    ),
    Case("prepare-out-locked", "prepare", _prepare, ("out", "another siammae run"), _locked),
    Case("prepare-out-linked", "prepare", _prepare, ("sub", "symbolic link"), _planted_link("sub", True)),
    Case("prepare-disk-full-index", "prepare", _prepare, ("index.json", "No space left"), _fail_replace("index.json")),
    # -------------------------------------------------------------------------------------------- export
    Case("export-opset-30", "export", lambda w: _export(w, "--opset", "30"), ("opset 30",)),
    Case(
        "export-huge",
        "export",
        lambda w: _export(w)[:4] + ["--height", "4000", "--width", "4000"],
        ("4000x4000", "needs about"),
        _small_memory,
    ),  # fmt: skip
    Case(
        "export-ckpt-hostile",
        "export",
        lambda w: ["--ckpt", str(w["tmp"] / "bad.pt"), "--out", str(w["out"] / "m.onnx")],
        ("bad.pt", "depth"),
        _hostile_ckpt,
    ),  # fmt: skip
    Case("export-ckpt-missing", "export", lambda w: ["--ckpt", str(w["tmp"] / "no.pt")], ("no.pt",)),
    Case("export-disk-full", "export", _export, ("model.onnx", "No space left"), _fail_replace(".onnx")),
    # ---------------------------------------------------------------------------------------------- attn
    Case(
        "attn-size-huge",
        "attn",
        lambda w: _attn(w, "--out", w["out"])[:3] + ["--size", "4000", "--out", str(w["out"]), "-q"],
        ("size 4000", "needs about"),
        _small_memory,
    ),  # fmt: skip
    Case("attn-input-missing", "attn", lambda w: _attn(w, "--out", w["out"], input=w["tmp"] / "nope"), ("nope",)),
    Case("attn-heads-bad", "attn", lambda w: _attn(w, "--out", w["out"], "--heads", "99"), ("99",)),
    Case("attn-out-gif", "attn", lambda w: _attn(w, "--out", w["tmp"] / "a.gif"), ("a.gif",)),
    Case(
        "attn-out-linked",
        "attn",
        lambda w: _attn(w, "--out", w["out"]),
        ("sub", "symbolic link"),
        _planted_link("sub", True),
    ),  # fmt: skip
    Case(
        "attn-disk-full",
        "attn",
        lambda w: _attn(w, "--out", w["out"]),
        ("00000.png", "No space left"),
        _fail_replace(".png"),
    ),  # fmt: skip
    Case(
        "attn-ckpt-hostile",
        "attn",
        lambda w: _attn(w)[:1] + ["--ckpt", str(w["tmp"] / "bad.pt"), "--out", str(w["out"])],
        ("bad.pt", "depth"),
        _hostile_ckpt,
    ),  # fmt: skip
    # --------------------------------------------------------------- preset / size: one registry, one size parser
    Case(
        "attn-size-malformed",
        "attn",
        lambda w: _attn(w)[:3] + ["--size", "64x", "--device", "cpu", "--out", str(w["out"]), "-q"],
        ("'64x' is not a size",),
    ),  # fmt: skip
    Case(
        "attn-size-not-patch-multiple",
        "attn",
        lambda w: _attn(w)[:3] + ["--size", "60x100", "--device", "cpu", "--out", str(w["out"]), "-q"],
        ("input size 60x100 is not a multiple of the patch size 8",),
    ),  # fmt: skip
    Case("attn-preset-unknown", "attn", lambda w: _attn(w, "--out", w["out"], "--preset", "davis"), ("'davis'",)),
    Case(
        "export-size-malformed",
        "export",
        lambda w: ["--ckpt", str(w["ckpt"]), "--out", str(w["out"] / "m.onnx"), "--size", "0x64", "--no-verify"],
        ("'0x64' is not a size",),
    ),  # fmt: skip
    # ------------------------------------------------------ issue 29: refused before the weights and the model load
    Case(
        "track-mask-dir-later-empty",
        "track",
        lambda w: _track_default(w, "--mask-dir", w["tmp"] / "md"),
        ("md/00001.png", "mask is empty"),
        _later_mask(lambda d: _save_p(d / "00001.png", np.zeros((SIZE, SIZE), np.uint8))),
    ),  # fmt: skip
    Case(
        "track-mask-dir-later-jpeg",
        "track",
        lambda w: _track_default(w, "--mask-dir", w["tmp"] / "md"),
        ("md/00001.jpg", "JPEG"),
        _later_mask(lambda d: Image.fromarray(_ids(1) * 200).convert("RGB").save(d / "00001.jpg", quality=80)),
    ),  # fmt: skip
    Case(
        "track-mask-dir-later-16bit-300",
        "track",
        lambda w: _track_default(w, "--mask-dir", w["tmp"] / "md"),
        ("md/00001.png", "300"),
        _later_mask(_sixteen_bit_300),
    ),  # fmt: skip
    Case(
        "track-size-absurd-before-weights",
        "track",
        lambda w: _track_default(w, "--mask", w["mask"])[:1] + ["--size", "100000", "--mask", str(w["mask"])],
        ("100000", "8192-pixel limit"),
        _no_weights,
    ),  # fmt: skip
    Case(
        "track-cuda-without-gpu-before-weights",
        "track",
        lambda w: _track_default(w, "--mask", w["mask"])[:3] + ["--device", "cuda", "--mask", str(w["mask"])],
        ("--device cuda needs a CUDA GPU", "no GPU driver"),
        _no_gpu,
    ),  # fmt: skip
    Case(
        "track-fp16-on-cpu-before-weights",
        "track",
        lambda w: _track_default(w, "--mask", w["mask"], "--dtype", "fp16"),
        ("--dtype fp16 needs a CUDA device, not --device cpu",),
        _no_weights,
    ),  # fmt: skip
    Case(
        "track-fp16-auto-without-gpu-before-weights",
        "track",
        lambda w: _track_default(w, "--mask", w["mask"])[:3] + ["--dtype", "fp16", "--mask", str(w["mask"])],
        ("--dtype fp16 needs a CUDA GPU",),
        _no_gpu,
    ),  # fmt: skip
    Case(
        "attn-heads-out-of-range-before-weights",
        "attn",
        lambda w: [str(w["video"]), "--heads", "0,9", "--device", "cpu", "--out", str(w["out"]), "-q"],
        ("head 9 is out of range: the model has 6 heads",),
        _no_weights,
    ),  # fmt: skip
    Case(
        "attn-cuda-without-gpu-before-weights",
        "attn",
        lambda w: [str(w["video"]), "--device", "cuda", "--out", str(w["out"]), "-q"],
        ("--device cuda needs a CUDA GPU",),
        _no_gpu,
    ),  # fmt: skip
    Case(
        "eval-cuda-without-gpu-before-weights",
        "eval",
        lambda w: ["davis", "--root", str(w["davis"]), "--out", str(w["out"]), "--size", "64", "--device", "cuda"],
        ("--device cuda needs a CUDA GPU",),
        _no_gpu,
    ),  # fmt: skip
    Case(
        "eval-size-absurd-before-weights",
        "eval",
        lambda w: ["davis", "--root", str(w["davis"]), "--out", str(w["out"]), "--size", "100000"],
        ("100000", "8192-pixel limit"),
        _no_weights,
    ),  # fmt: skip
    Case(
        "export-trt-without-gpu",
        "export",
        lambda w: _export(w, "--trt"),
        ("--trt", "needs an NVIDIA GPU", "no GPU driver"),
        _no_gpu,
    ),  # fmt: skip
    Case(
        "export-size-absurd-before-weights",
        "export",
        lambda w: ["--out", str(w["out"] / "m.onnx"), "--height", "100000", "--width", "100000"],
        ("--height/--width 100000x100000", "8192-pixel limit"),
        _no_weights,
    ),  # fmt: skip
    # --------------------------------------------------------------- issue 29: no non-finite number on any option
    Case("track-duration-nan", "track", lambda w: _track(w, "--duration", "nan"), ("'nan' is not a finite number",)),
    Case(
        "track-temperature-inf", "track", lambda w: _track(w, "--temperature", "inf"), ("'inf' is not a finite",)
    ),  # fmt: skip
    Case("eval-temperature-nan", "eval", lambda w: _eval(w, "--temperature", "nan"), ("'nan' is not a finite",)),
    Case("attn-alpha-nan", "attn", lambda w: _attn(w, "--alpha", "nan"), ("'nan' is not a finite number",)),
    Case("export-workspace-inf", "export", lambda w: _export(w, "--workspace", "inf"), ("'inf' is not a finite",)),
    # ------------------------------------------------------------------------- issue 29: messages that misled
    Case("prepare-nowhere", "prepare", lambda w: ["nowhere", "--out", str(w["out"])], ("nowhere: no such file",)),
    Case(
        "eval-results-with-attention",
        "eval",
        lambda w: ["davis", "--root", str(w["davis"]), "--results", str(w["tmp"]), "--attention", "exact"],
        ("--attention only applies with --ckpt",),
    ),  # fmt: skip
    # ---------------------------------------------------------------------------------------------- demo
    Case("demo-out-is-file", "demo", lambda w: ["--out", str(w["tmp"] / "f"), "--quiet"], ("f",), _write("f", "x")),
    Case(
        "demo-out-linked",
        "demo",
        lambda w: ["--out", str(w["out"]), "--quiet"],
        ("train", "symbolic link"),
        _planted_link("train", True),
    ),  # fmt: skip
    Case(
        "demo-out-locked", "demo", lambda w: ["--out", str(w["out"]), "--quiet"], ("another siammae run",), _locked
    ),  # fmt: skip
    # -------------------------------------------------------------------------- images: frames and masks (data)
    Case(
        "image-frame-bomb",
        "track",
        lambda w: [str(w["tmp"] / "v"), "--mask", str(w["mask"]), "--ckpt", str(w["ckpt"]), "--out", str(w["out"])],
        ("v/00000.png", "60000x60000 pixels", "megapixel limit"),
        _bomb("v/00000.png"),
    ),  # fmt: skip
    Case(
        "image-mask-bomb",
        "track",
        lambda w: _track(w, "--out", w["out"], mask=False) + ["--mask", str(w["tmp"] / "m.png")],
        ("m.png", "60000x60000 pixels", "megapixel limit"),
        _bomb("m.png"),
    ),  # fmt: skip
    Case(
        "image-mask-dir-bomb",
        "track",
        lambda w: _track(w, "--out", w["out"]) + ["--mask-dir", str(w["tmp"] / "md")],
        ("md/00001.png", "60000x60000 pixels"),
        _bomb("md/00001.png"),
    ),  # fmt: skip
    Case(
        "eval-annotation-bomb",
        "eval",
        _eval,
        ("alpha", "00000.png", "60000x60000 pixels"),
        _eval_bomb_annotation,
    ),  # fmt: skip
    # ------------------------------------------------------------------------ issue 29, infrastructure (io, data)
    Case(
        "track-work-wide-video",
        "track",
        lambda w: _track_work(w, w["tmp"] / "wide", w["tmp"] / "wide.png", "128"),
        ("128x40000", "operations per frame", "SIAMMAE_MAX_FRAME_SECONDS"),
        _wide_video,
    ),  # fmt: skip
    Case(
        "track-work-size-4000",
        "track",
        lambda w: _track_work(w, w["video"], w["mask"], "4000x4000"),
        ("4000x4000", "operations per frame"),
        _two_cores,
    ),  # fmt: skip
    Case(
        "prepare-manifest-a-list",
        "prepare",
        _prepare,
        ("prepare.json", "expected an object at the top, found a list"),
        _write("out/prepare.json", "[1, 2]"),
    ),
    Case(
        "prepare-manifest-settings-a-string",
        "prepare",
        _prepare,
        ("prepare.json", "'settings' must be an object, found a string"),
        _write("out/prepare.json", json.dumps({"settings": "x", "videos": []})),
    ),
    Case(
        "prepare-manifest-deep",
        "prepare",
        _prepare,
        ("prepare.json", "nested too deeply"),
        _write("out/prepare.json", "[" * 100_000),
    ),
    Case(
        "track-keypoints-deep",
        "track",
        lambda w: _track(w, "--out", w["out"], "--keypoints", w["tmp"] / "k.json", mask=False),
        ("k.json", "nested too deeply"),
        _write("k.json", "[" * 100_000),
    ),  # fmt: skip
    Case(
        "track-live-format-unknown",
        "track",
        lambda w: _track_stdin(w, "--format", "nosuchformat"),
        ("--format nosuchformat", "not an input format"),
    ),  # fmt: skip
    Case(
        "eval-jhmdb-split-utf16",
        "eval",
        lambda w: ["jhmdb", "--root", str(w["tmp"] / "J"), "--ckpt", str(w["ckpt"]), "--out", str(w["out"])],
        ("walk_test_split1.txt", "not UTF-8"),
        _jhmdb_utf16,
    ),  # fmt: skip
    Case(
        "train-disk-full-inside-checkpoint",
        "train",
        _train,
        ("cannot write", "step_00000001.pt", "No space left on device"),
        _full_disk_in_checkpoint,
    ),
    # --out that is a symbolic link: refused by every command, nothing written or locked in its target
    Case("track-out-is-link", "track", lambda w: _track(w, "--out", w["out"]), ("is a symbolic link",), _out_is_link),
    Case("eval-out-is-link", "eval", _eval, ("is a symbolic link", "give the real folder"), _out_is_link),
    Case("train-out-is-link", "train", _train, ("is a symbolic link",), _out_is_link),
    Case("prepare-out-is-link", "prepare", _prepare, ("is a symbolic link",), _out_is_link),
    Case(
        "track-batch-out-is-link",
        "track",
        lambda w: _batch(w),
        ("is a symbolic link",),
        _both(_manifest([{}]), _out_is_link),
    ),
]


# ------------------------------------------------------------------------------------------------ the checks
def _snapshot(root: Path, skip: Path | None) -> dict[str, tuple]:
    """Every path under ``root`` (links not followed) -> (kind, size, mtime, mode); ``skip``'s subtree left out."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            if skip is not None and (p == skip or skip in p.parents):
                continue
            st = p.lstat()
            state[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return state


def _check_readable(path: Path, planted: dict | None = None) -> None:
    """Every PNG, JSON and checkpoint under ``path`` opens and parses (nothing left torn); ``planted``: the files a
    case's setup put there (its snapshot), left out while unchanged (a hostile input is not the run's output)."""
    if not path.exists():
        return
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    planted = planted or {}
    root = path if path.is_dir() else path.parent
    for f in files:
        st = f.lstat()
        if planted.get(str(f.relative_to(root))) == (st.st_mode, st.st_size, st.st_mtime_ns):
            continue
        if f.suffix == ".png":
            with Image.open(f) as im:
                im.load()
        elif f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix == ".jsonl":
            sio.read_jsonl(f)
        elif f.suffix in (".pt", ".pth"):
            read_checkpoint(f)
        assert not f.name.startswith(sio.TMP_PREFIX), f"temp file left behind: {f}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(case: Case, inputs, tmp_path, monkeypatch):
    w = {**inputs, "tmp": tmp_path, "out": tmp_path / "out", "_cleanup": []}
    monkeypatch.chdir(tmp_path)  # default outputs (export beside nothing, attn in cwd) land in the case's folder
    if case.setup is not None:
        case.setup(w, monkeypatch)
    args = case.args(w)
    planted = _snapshot(w["out"], None) if w["out"].is_dir() else {}
    before = _snapshot(tmp_path, w["out"]), _snapshot(inputs["root"], None)
    try:
        result = CliRunner().invoke(COMMANDS[case.command], args)
    finally:
        for release in w["_cleanup"]:
            release()
    after = _snapshot(tmp_path, w["out"]), _snapshot(inputs["root"], None)
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exc_info  # not an exception escaping
    assert "Traceback" not in result.output
    # ours: "error: ..."; click's own checks of an option's type: "Error: Invalid value for '--out': ..."
    errors = [ln for ln in result.output.splitlines() if ln.lower().startswith("error:")]
    assert len(errors) == 1, result.output
    for fragment in case.expect:
        assert fragment.format(**w) in errors[0], errors[0]
    assert after == before, "a file outside --out was created, changed or removed"
    _check_readable(w["out"], planted)
    if (w["tmp"] / "victim").exists() and (w["tmp"] / "victim").is_file():
        assert (w["tmp"] / "victim").read_text() in ("precious\n", '{"step": 1}\n')


def test_table_is_large_enough():
    assert len(CASES) >= 127 and len({c.id for c in CASES}) == len(CASES)
    assert {c.command for c in CASES} == set(COMMANDS)
