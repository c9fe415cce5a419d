"""Helpers shared by several test files: ``from helpers import ...`` (pyproject's ``pythonpath = ["tests"]`` puts
tests/ on sys.path for the test files in its subfolders). No test module imports another test module.
"""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import siammae.data.video as video_module
from siammae.model.config import ModelConfig
from siammae.model.encoder import ViTEncoder
from siammae.propagation import get_preset

IMAGENET_MEAN = [0.485, 0.456, 0.406]

ROOT = Path(__file__).resolve().parents[1]  # the repository (tests/helpers.py)
TENSORRT_INSTALLED = importlib.util.find_spec("tensorrt") is not None


def write_with_pyav(path, frames, fps=25, **options) -> None:
    """Encode (H, W, 3) uint8 ``frames`` to h264 with PyAV directly: container options such as mp4 faststart, or
    an mkv, whose header holds no frame count (``write_video`` writes mp4 with one)."""
    with av.open(str(path), "w", options=options) as c:
        s = c.add_stream("libx264", rate=fps)
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def interrupt_reading_at(monkeypatch, stem: str) -> None:
    """Make frame-folder decoding raise KeyboardInterrupt, as Ctrl-C would, when it reaches the image ``stem``."""
    read_image = video_module.read_image

    def interrupted(path):
        if path.stem == stem:
            raise KeyboardInterrupt
        return read_image(path)

    monkeypatch.setattr(video_module, "read_image", interrupted)


def run_until_sigint(cmd, progress, at: int = 10, timeout: float = 120) -> tuple[int, str]:
    """Run ``cmd`` (str / Path items) with this checkout on PYTHONPATH, send SIGINT once ``progress()`` (e.g. the
    frames written so far) reaches ``at``, in the middle of the run; return its exit status and stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([str(c) for c in cmd], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while progress() < at:
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def assert_one_line_error(result, *fragments) -> None:
    """A click ``result`` that failed as siammae CLIs do on bad input: status 2, no traceback, and a last line
    ``error: ...`` holding every fragment."""
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)  # not a traceback
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def davis_2016_layout(shared_data: Path, root: Path, names) -> Path:
    """A DAVIS-2016 root whose val split is ``names``, frames and annotations linked from ../shared/data."""
    for part in ("JPEGImages", "Annotations"):
        (root / part).mkdir(parents=True)
        (root / part / "480p").symlink_to(shared_data / "davis2016" / part / "480p")
    (root / "ImageSets/2016").mkdir(parents=True)
    (root / "ImageSets/2016/val.txt").write_text("\n".join(names) + "\n")
    return root


def write_mpegts(out, frames, fps: float = 20.0, pace: bool = False) -> None:
    """Encode (H, W, 3) uint8 ``frames`` as an MPEG-TS stream (MPEG-2 video, no B-frames) to ``out`` (a path or a
    binary file object such as a pipe); with ``pace`` one frame every 1 / fps seconds, as a live source sends them,
    each flushed at once."""
    with av.open(out, "w", format="mpegts", options={"flush_packets": "1"}) as c:
        s = c.add_stream("mpeg2video", rate=int(fps))
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        t0 = time.perf_counter()
        for i, f in enumerate(frames):
            if pace:
                time.sleep(max(0.0, t0 + i / fps - time.perf_counter()))
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
            if pace and hasattr(out, "flush"):
                out.flush()
        for p in s.encode():
            c.mux(p)


def live_writer(num_frames: int, size, fps: float, seed: int = 0) -> subprocess.Popen:
    """A process writing a synthetic clip (``siammae.data.synthetic``, ``seed``) as MPEG-TS to its stdout at real
    time; read it from ``proc.stdout`` (``pipe:N`` for FFmpeg)."""
    code = (
        "import sys; from helpers import write_mpegts; from siammae.data.synthetic import make_synthetic_clip; "
        f"f, _ = make_synthetic_clip({num_frames}, {tuple(size)}, seed={seed}); "
        f"write_mpegts(sys.stdout.buffer, f, fps={fps}, pace=True)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)


def colour_encoder(patch: int = 4, dim: int = 16) -> ViTEncoder:
    """A ViT whose features are the mean colour of each patch: the patch embedding averages each channel (and its
    negative, so that the final LayerNorm only rescales), position embeddings and every residual branch are zero.
    Cosine similarity is then colour similarity, which tells the synthetic clips' warm objects from their cool
    background: a known-good encoder for checking the plumbing."""
    enc = ViTEncoder(
        ModelConfig(img_size=32, patch_size=patch, embed_dim=dim, depth=1, num_heads=2, pos_embed="learned")
    )
    with torch.no_grad():
        w = torch.zeros(dim, 3, patch, patch)
        for c in range(3):
            w[c, c] = 1.0 / patch**2
            w[3 + c, c] = -1.0 / patch**2
        enc.patch_embed.proj.weight.copy_(w)
        enc.patch_embed.proj.bias.zero_()
        enc.pos_embed.zero_()
        for blk in enc.blocks:
            for lin in (blk.attn.proj, blk.mlp.fc2):
                lin.weight.zero_()
                lin.bias.zero_()
    return enc.eval()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


# facebookresearch/dino eval_video_segmentation.py, written densely (the whole affinity matrix, as the script)
def dino_dense(feats, first_ids, topk, temperature, n_last, radius):
    """facebookresearch/dino eval_video_segmentation.py: label_propagation, step by step."""
    h, w, D = feats[0].shape
    N = h * w
    first_seg = F.one_hot(first_ids, int(first_ids.max()) + 1).permute(2, 0, 1)[None].float()  # (1, C, h, w)
    ys, xs = torch.arange(N) // w, torch.arange(N) % w
    mask = ((ys[:, None] - ys[None]).abs() <= radius) & ((xs[:, None] - xs[None]).abs() <= radius)  # (Nq, Nk)
    que, out = [], []
    for t in range(1, len(feats)):
        used_feats = [feats[0].reshape(N, D).T] + [f for f, _ in que]  # each D x N
        used_segs = [first_seg] + [s for _, s in que]
        feat_tar = F.normalize(feats[t].reshape(N, D), dim=1, p=2)
        feat_sources = F.normalize(torch.stack(used_feats), dim=1, p=2)  # ncontext x D x N
        ncontext = len(used_feats)
        aff = torch.exp(torch.bmm(feat_tar.unsqueeze(0).repeat(ncontext, 1, 1), feat_sources) / temperature)
        aff *= mask.float().unsqueeze(0)
        aff = aff.transpose(2, 1).reshape(-1, N)  # ncontext*N (keys) x N (queries)
        tk_val, _ = torch.topk(aff, dim=0, k=topk)
        tk_val_min, _ = torch.min(tk_val, dim=0)
        aff[aff < tk_val_min] = 0
        aff = aff / torch.sum(aff, keepdim=True, axis=0)
        segs = torch.cat(used_segs)
        C = segs.shape[1]
        segs = segs.reshape(ncontext, C, -1).transpose(2, 1).reshape(-1, C).T  # C x ncontext*N
        seg_tar = torch.mm(segs, aff).reshape(1, C, h, w)
        if len(que) == n_last:
            que.pop(0)
        que.append((feats[t].reshape(N, D).T, seg_tar))
        out.append(seg_tar[0])
    return out


def dino_output(soft, patch, out_hw):
    """DINO: bilinear x patch, norm_mask (its loop), torch.max, uint8, PIL NEAREST to the original size."""
    x = F.interpolate(soft[None], scale_factor=patch, mode="bilinear", align_corners=False)[0]
    for c in range(x.shape[0]):
        m = x[c]
        if m.max() > 0:
            m = m - m.min()
            m = m / m.max()
            x[c] = m
    _, seg = torch.max(x, dim=0)
    seg = seg.numpy().astype(np.uint8)
    return np.array(Image.fromarray(seg).resize((out_hw[1], out_hw[0]), 0))


# ------------------------------------------------------------------------------------------------------------
# The reference scripts' input code, written out (facebookresearch/dino, CropMAE = CRW's data/vos.py)
# and DINO's whole evaluation loop
# ------------------------------------------------------------------------------------------------------------
def color_normalize(x, mean, std):
    for t, m, s in zip(x, mean, std, strict=True):  # in place, channel by channel, as both scripts
        t.sub_(m)
        t.div_(s)
    return x


def dino_read_frame(path, scale_size=480):
    """DINO ``read_frame``: cv2.imread, short side ``scale_size``, long side floored to 64, uint8 cv2.resize,
    / 255, BGR -> RGB, std (0.228, 0.224, 0.225)."""
    img = cv2.imread(str(path))
    ori_h, ori_w, _ = img.shape
    if ori_h > ori_w:
        tw = scale_size
        th = int(((tw * ori_h) / ori_w // 64) * 64)
    else:
        th = scale_size
        tw = int(((th * ori_w) / ori_h // 64) * 64)
    img = cv2.resize(img, (tw, th))
    img = img.astype(np.float32) / 255.0
    img = np.transpose(img[:, :, ::-1].copy(), (2, 0, 1))
    return color_normalize(torch.from_numpy(img).float(), IMAGENET_MEAN, [0.228, 0.224, 0.225])


def cropmae_load(path, new_h, new_w):
    """CropMAE ``load_image`` + ``resize`` + ``color_normalize``: float32 / 255, BGR -> RGB, float cv2.resize."""
    img = cv2.imread(str(path)).astype(np.float32) / 255.0
    img = img[:, :, ::-1].copy()
    img = cv2.resize(img, (new_w, new_h))
    img = torch.from_numpy(np.transpose(img, (2, 0, 1))).float()
    return color_normalize(img, IMAGENET_MEAN, [0.229, 0.224, 0.225])


def dino_vit_features(model, x):
    """facebookresearch/dino vision_transformer.py ``get_intermediate_layers(x, n=1)`` with ``model``'s weights
    (DINO's parameter names), [CLS] dropped: (1, 3, H, W) -> (h, w, D). Its operation order, written out."""
    B, nc, w, h = x.shape  # DINO's names: w is the height here
    p = model.patch_size
    t = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    t = torch.cat((model.cls_token.expand(B, -1, -1), t), dim=1)
    N = model.pos_embed.shape[1] - 1
    dim = t.shape[-1]
    w0, h0 = w // p + 0.1, h // p + 0.1  # interpolate_pos_encoding
    patch_pos = F.interpolate(
        model.pos_embed[:, 1:].reshape(1, int(N**0.5), int(N**0.5), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / N**0.5, h0 / N**0.5),
        mode="bicubic",
    )
    patch_pos = patch_pos.permute(0, 2, 3, 1).view(1, -1, dim)
    t = t + torch.cat((model.pos_embed[:, 0].unsqueeze(0), patch_pos), dim=1)
    for blk in model.blocks:
        a = blk.attn
        y = blk.norm1(t)
        Bn, Nn, C = y.shape
        qkv = a.qkv(y).reshape(Bn, Nn, 3, a.num_heads, C // a.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = ((q @ k.transpose(-2, -1)) * (C // a.num_heads) ** -0.5).softmax(dim=-1)
        t = t + a.proj((att @ v).transpose(1, 2).reshape(Bn, Nn, C))
        t = t + blk.mlp.fc2(blk.mlp.act(blk.mlp.fc1(blk.norm2(t))))
    out = model.norm(t)[0, 1:]
    return out.reshape(w // p, h // p, dim)


def dino_script(model, frame_paths, seg_path, scale_size, patch):
    """eval_video_tracking_davis: read_frame, extract_feature one frame at a time, label_propagation, output."""
    frames = [dino_read_frame(p, scale_size) for p in frame_paths]
    th, tw = frames[0].shape[-2:]
    with torch.inference_mode():
        feats = [dino_vit_features(model, f[None]) for f in frames]  # get_intermediate_layers(n=1), no [CLS]
    seg = Image.open(seg_path)
    small = np.array(seg.resize((tw // patch, th // patch), 0)) > 0  # read_seg: PIL NEAREST; DAVIS-2016 0/255 -> 1
    cfg = get_preset("dino").propagation
    consts = dict(topk=cfg.topk, temperature=cfg.temperature, n_last=cfg.n_last, radius=cfg.radius)
    soft = dino_dense(feats, torch.from_numpy(small.astype(np.int64)), **consts)
    return [dino_output(s.clone(), patch, np.asarray(seg).shape) for s in soft]


def noise_frames(folder: Path, count: int, height: int, width: int, suffix: str = ".jpg") -> Path:
    """A new frame folder ``folder/00000<suffix> ...``: ``count`` frames of uniform RGB noise, ``height`` x
    ``width``, frame ``i`` drawn from seed ``i`` (the same pixels on every run); returns ``folder``."""
    folder.mkdir()
    for i in range(count):
        rgb = np.random.default_rng(i).integers(0, 255, (height, width, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(folder / f"{i:05d}{suffix}")
    return folder
