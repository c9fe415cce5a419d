"""Agreement of ``siammae-track --preset crw`` with CRW's own code, on whole DAVIS-2016 sequences.

The reference is ajabri/videowalk as published, run unmodified on a CPU: its ``data/vos.py`` loads the sequence
(``--cropSize 480``: frames resized to 480x480, frame 0's annotation turned into label channels), its ``test.py``
``test()`` propagates (``--topk 10 --videoLen 20 --radius 12 --temperature 0.05``, its
``mem_efficient_batched_affinity``) and writes ``<vid>_<t>_mask.png`` through ``dump_predictions``, and its
``eval/convert_davis.py`` turns those into DAVIS id PNGs at 854x480. The one change is the model: its encoder slot
holds the same random ViT-S/16 (timm's ``vit_small_patch16_224`` layout, seed 0) as the siammae side, called
on CRW's own input tensors. CRW's code is not in the package: this script takes it from a checkout
(``--crw``, the repository root, e.g. a clone of github.com/ajabri/videowalk) and imports its modules; its
dependencies that the propagation never calls (visdom, scikit-learn, scikit-image, kornia) are stubbed, imageio
and matplotlib must be importable (``--deps`` adds a folder to the end of ``sys.path``).

Both sides see bit-identical input tensors (the same OpenCV calls) and so bit-identical features; a pixel can
differ through a near-tie of the top-k or of the argmax that fp32 rounding decides differently in the two
implementations (CRW normalises and scores in another operation order).

    python benchmarks/crw_agreement.py --crw /path/to/videowalk --sequences blackswan,car-shadow
"""

from __future__ import annotations

import argparse
import importlib.machinery
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._meta import environment, environment_markdown, write_results  # noqa: E402
from siammae.data.masks import read_mask  # noqa: E402
from siammae.model.encoder import ViTEncoder  # noqa: E402
from siammae.model.registry import model_config  # noqa: E402
from siammae.propagation.driver import Tracker  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "davis2016"
CRW_ARGS = dict(topk=10, videoLen=20, radius=12.0, temperature=0.05, cropSize=480)


def vit(depth: int = 12) -> ViTEncoder:
    torch.manual_seed(0)
    return ViTEncoder(model_config("vits16", depth=depth)).eval()


class CRWSlot(torch.nn.Module):
    """What ``test.py`` calls: ``model.encoder(x)``, x (1, 3, T, H, W) normalised frames -> (1, D, T, h, w)."""

    def __init__(self, model: ViTEncoder, attention: str):
        super().__init__()
        self.model, self.attention = model, attention

    def encoder(self, x: torch.Tensor) -> torch.Tensor:
        frames = x[0].transpose(0, 1).contiguous()  # (3, T, H, W) -> (T, 3, H, W)
        with torch.inference_mode():
            feats = self.model.features(frames, attention=self.attention)  # (T, h, w, D)
        return feats.permute(3, 0, 1, 2)[None].clone()  # (1, D, T, h, w)


def _stub(name: str, **attrs) -> None:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)  # torch._dynamo, imported later, calls find_spec on it
    mod.__dict__.update(attrs)
    sys.modules.setdefault(name, mod)


def _opencv_channels_shim():
    """OpenCV 5's Python binding resizes at most 128 channels at once; CRW's OpenCV (3.x / 4.x) took 512, and CRW
    resizes one channel per grey level of its bilinear annotation (144 on blackswan). Resize larger arrays in
    groups of channels: bilinear and nearest work channel by channel, so the result is what CRW's OpenCV gave."""
    import cv2

    from siammae.propagation.labels import _cv_resize

    resize = cv2.resize

    def shim(src, dsize, dst=None, fx=None, fy=None, interpolation=cv2.INTER_LINEAR):
        if isinstance(src, np.ndarray) and src.ndim == 3 and src.shape[2] > 128 and not fx and not fy:
            return _cv_resize(src, tuple(dsize), interpolation)  # CRW passes INTER_* as dst: the default applies
        return resize(src, dsize, dst, fx or 0, fy or 0, interpolation)

    cv2.resize = shim


def skip_discarded_labels(folder: Path) -> None:
    """CRW's loader turns the annotation of *every* frame into label channels (a minute per frame here), then
    ``test.py`` multiplies those of frames 1.. by 0 (``lbls[0, n_context:] *= 0``): only frame 0's are used. Give
    frames 1.. the cache files its loader looks for first (``<frame>_onehot.npy``, ``<frame>_size30x30.npy``),
    zeros of the right shape, so that it skips work whose result it discards; frame 0's are computed by CRW."""
    from siammae.propagation.labels import crw_first_labels

    rgb = np.asarray(__import__("PIL.Image").Image.open(folder / "00000.png").convert("RGB"))
    C = crw_first_labels(rgb, (CRW_ARGS["cropSize"],) * 2, (30, 30))[0].shape[0]
    for png in sorted(folder.glob("*.png"))[1:]:
        np.save(png.with_name(png.stem + "_onehot.npy"), np.zeros(1, dtype=bool))
        np.save(png.with_name(png.stem + "_size30x30.npy"), np.zeros((30, 30, C), dtype=np.float32))


def import_crw(code: Path):
    """CRW's ``test`` and ``data.vos`` modules, with the modules the propagation never calls stubbed."""
    _opencv_channels_shim()
    for name in ("visdom", "sklearn", "sklearn.decomposition", "skimage", "kornia", "wandb"):
        _stub(name, PCA=None, Visdom=None)
    _stub("model", CRW=None)  # test.py imports CRW's ResNet model; its encoder slot is filled by CRWSlot
    sys.path.insert(0, str(code))
    import test as crw_test  # noqa: E402  (CRW's code/test.py)
    from data import vos  # noqa: E402

    return crw_test, vos


def run_crw(crw_root: Path, work: Path, sequences: list[str], model, attention) -> dict[str, list[np.ndarray]]:
    """CRW's pipeline on ``sequences``: -> {sequence: [(480, 854) uint8 ids of frames 0..]}."""
    data = work / "davis"
    for seq in sequences:  # CRW caches .npy files beside the annotations: give it a copy
        (data / "JPEGImages/480p").mkdir(parents=True, exist_ok=True)
        (data / "JPEGImages/480p" / seq).symlink_to(DATA / "JPEGImages/480p" / seq)
        shutil.copytree(DATA / "Annotations/480p" / seq, data / "Annotations/480p" / seq)
        skip_discarded_labels(data / "Annotations/480p" / seq)
    (data / "ImageSets/2017").mkdir(parents=True)
    (data / "ImageSets/2017/val.txt").write_text("".join(f"{s}\n" for s in sequences))
    filelist = work / "vallist.txt"
    filelist.write_text("".join(f"{data}/JPEGImages/480p/{s} {data}/Annotations/480p/{s}\n" for s in sequences))
    crw_test, vos = import_crw(crw_root / "code")
    args = types.SimpleNamespace(
        filelist=str(filelist), imgSize=CRW_ARGS["cropSize"], videoLen=CRW_ARGS["videoLen"],
        mapScale=np.array([16, 16]), texture=False, round=False, use_lab=False, device="cpu",
        temperature=CRW_ARGS["temperature"], topk=CRW_ARGS["topk"], radius=CRW_ARGS["radius"], long_mem=[0],
        no_l2=False, norm_mask=False, save_path=str(work / "crw_out") + "/", pca_vis=False, visdom=False,
    )  # fmt: skip
    Path(args.save_path).mkdir()
    loader = torch.utils.data.DataLoader(vos.VOSDataset(args), batch_size=1, shuffle=False, num_workers=0)
    crw_test.vis = None  # test.py's __main__ sets this global (its visdom switch), test() reads it
    with torch.no_grad():
        crw_test.test(loader, CRWSlot(model, attention), args)
    out = work / "crw_davis"
    convert = [sys.executable, "convert_davis.py", "-o", f"{out}/", "-i", args.save_path, "-d", f"{data}/"]
    done = subprocess.run(convert, cwd=crw_root / "code/eval", capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"CRW's convert_davis.py failed:\n{done.stderr[-2000:]}")
    return {s: [read_ids(p) for p in sorted((out / s).glob("*.png"))] for s in sequences}


def read_ids(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.getchannel(0) if im.mode == "P" else im.convert("L"), dtype=np.uint8).copy()


def run_siammae(sequences: list[str], model) -> dict[str, list[np.ndarray]]:
    out = {}
    for seq in sequences:
        frames = sorted((DATA / "JPEGImages/480p" / seq).glob("*.jpg"))
        first = DATA / "Annotations/480p" / seq / "00000.png"
        out[seq] = [m for _, m in Tracker(model, "crw", device="cpu", prefetch=False).masks(frames, first)]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crw", type=Path, required=True, help="a checkout of ajabri/videowalk (the repository root)")
    ap.add_argument("--deps", type=Path, default=None, help="a folder holding imageio and matplotlib")
    ap.add_argument("--sequences", default="blackswan,car-shadow")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--depth", type=int, default=12, help="ViT-S/16 blocks (2: the same comparison, 6x less encoding)")
    args = ap.parse_args()
    if args.deps is not None:
        sys.path.append(str(args.deps))
    torch.set_num_threads(args.threads)
    sequences = args.sequences.split(",")
    model = vit(args.depth)
    attention = "sdpa"  # the crw preset's; both sides call the same model.features
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        theirs = run_crw(args.crw.resolve(), Path(tmp), sequences, model, attention)
        t1 = time.time()
        ours = run_siammae(sequences, model)
        t2 = time.time()
    rows = []
    for seq in sequences:
        a, b = theirs[seq], ours[seq]
        assert len(a) == len(b), (seq, len(a), len(b))
        eq = [float(np.mean(x == y)) for x, y in zip(a[1:], b[1:], strict=True)]  # frame 0 is given on both sides
        fg = [float(np.mean((x > 0) == (y > 0))) for x, y in zip(a[1:], b[1:], strict=True)]
        gt = read_mask(DATA / "Annotations/480p" / seq / f"{len(a) - 1:05d}.png")
        rows.append({
            "sequence": seq, "frames": len(a), "pixels_equal_mean": round(100 * float(np.mean(eq)), 4),
            "pixels_equal_worst": round(100 * min(eq), 4), "worst_frame": 1 + int(np.argmin(eq)),
            "foreground_equal_worst": round(100 * min(fg), 4),
            "ids_crw": sorted(set(np.unique(np.concatenate([x.ravel() for x in a[1:]])).tolist())),
            "ids_siammae": sorted(set(np.unique(np.concatenate([x.ravel() for x in b[1:]])).tolist())),
            "last_frame_object_pixels_gt": int((gt > 0).sum()),
        })  # fmt: skip
        print(rows[-1], flush=True)
    meta = environment()
    md = [
        "# `siammae-track --preset crw` vs CRW's own code (ajabri/videowalk), whole DAVIS-2016 sequences",
        "",
        environment_markdown(meta),
        "",
        f"Random ViT-S/16 (seed 0, {args.depth} blocks) in both; CRW's `test.py` `test()`, its `data/vos.py` loader "
        "(`--cropSize 480 --topk 10 --videoLen 20 --radius 12 --temperature 0.05`) and `eval/convert_davis.py`, "
        'unmodified, its encoder slot holding the ViT; siammae: `Tracker(model, "crw")`, what `siammae-track '
        f"--preset crw` runs. CRW took {t1 - t0:.0f} s, siammae {t2 - t1:.0f} s (wall, a loaded 2-core machine). "
        "Frames 1.. compared (frame 0 is given); ids are CRW's: the DAVIS-palette index of the argmax channel's "
        "colour (intermediate greys of the bilinear annotation keep their grey level as id).",
        "",
        "| sequence | frames | pixels equal, mean % | worst frame % | worst frame | object/background equal, worst % |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['sequence']} | {r['frames']} | {r['pixels_equal_mean']} | {r['pixels_equal_worst']} | "
            f"{r['worst_frame']} | {r['foreground_equal_worst']} |"
            for r in rows
        ],
        "",
    ]
    write_results(
        "crw_agreement-cpu",
        meta,
        rows,
        "\n".join(md),
        settings={**CRW_ARGS, "sequences": sequences, "depth": args.depth},
    )


if __name__ == "__main__":
    main()
