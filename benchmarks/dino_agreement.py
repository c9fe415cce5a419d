"""The ``dino`` preset against DINO's own ``eval_video_segmentation.py``: mask pixels that agree, and time, per frame.

DINO's script runs from a checkout of facebookresearch/dino (``--dino-repo``; nothing of it is copied here): its
``eval_video_segmentation.py`` is loaded with ``.cuda()`` removed, the only change, and its
``eval_video_tracking_davis`` runs each whole sequence as its ``__main__`` would (``read_frame``, ``read_seg``,
its ``vision_transformer.vit_small``, ``label_propagation``, the output rule, the PNGs). Its ``__main__`` itself
is not run because it downloads a palette and needs DAVIS-2017's ImageSets; the palette only colours the PNGs.

The same weights on both sides: DINO's ``vit_small(patch_size=16)`` built with seed 0 (random, DINO's own
initialisation), saved as a DINO ``state_dict`` that siammae loads as foreign weights. siammae runs as a user does,
one process per sequence and mode: ``siammae-track --preset dino`` (``track``: fp32, DINO's operation order, the
default on a CPU), ``siammae-eval davis --preset dino`` (``eval``), ``siammae-track --preset dino --attention sdpa``
(``track-sdpa``: fp32, the fused attention, the faster CPU mode) and ``--dtype bf16`` (``track-bf16``). DINO's
script and siammae run back to back in the same run, on the same threads, and the load average is recorded: the
machine may be shared.

    python benchmarks/dino_agreement.py --dino-repo /path/to/dino                       # 3 sequences, 480p
    python benchmarks/dino_agreement.py --dino-repo ... --sequences blackswan --size 240 --modes track
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _meta import environment, environment_markdown, write_results  # noqa: E402

MODES = ("track", "eval", "track-bf16", "track-sdpa")


def load_dino(repo: Path):
    """DINO's eval_video_segmentation.py as a module, ``.cuda()`` removed; and its vision_transformer."""
    sys.path.insert(0, str(repo))
    import vision_transformer as vits  # DINO's, from the checkout

    path = repo / "eval_video_segmentation.py"
    src = path.read_text().replace(".cuda(non_blocking=True)", "").replace(".cuda()", "")
    mod = types.ModuleType("dino_eval_video_segmentation")
    mod.__file__ = str(path)
    exec(compile(src, str(path), "exec"), mod.__dict__)
    return mod, vits


def run_dino(mod, model, frames: list[Path], mask: Path, out: Path, size: int, keep: Path | None = None):
    """DINO's eval_video_tracking_davis on one whole sequence (its defaults: top-k 5, 7 frames, window 12);
    -> (wall seconds, seconds in its ``extract_feature``: the ViT forward). ``keep``: also save its per-frame
    features and soft labels there (``<sequence>.pt``), for diagnosis."""
    mod.args = args = argparse.Namespace(
        output_dir=str(out), n_last_frames=7, size_mask_neighborhood=12, topk=5, patch_size=16
    )  # restrict_neighborhood reads the module's global ``args``, as under its __main__
    read_frame, read_seg = mod.read_frame, mod.read_seg
    mod.read_frame = lambda p, scale_size=[size]: read_frame(p, scale_size)  # noqa: B006 (DINO's own default)
    palette = np.zeros((256, 3), np.uint8)
    palette[1:] = 255
    feats, soft, encoder_s = [], [], [0.0]
    extract, propagate = mod.extract_feature, mod.label_propagation

    def extract_timed(model, frame, return_h_w=False):  # timed, not changed: returns what DINO's returns
        t = time.perf_counter()
        r = extract(model, frame, return_h_w)
        encoder_s[0] += time.perf_counter() - t
        if keep is not None:
            feats.append((r[0] if return_h_w else r).clone())
        return r

    mod.extract_feature = extract_timed
    if keep is not None:  # record, not change: the wrapped function returns what DINO's returns

        def propagate_kept(*a, **kw):
            r = propagate(*a, **kw)
            soft.append(r[0][0].clone())
            return r

        mod.label_propagation = propagate_kept
    t0 = time.perf_counter()
    first_seg, seg_ori = read_seg(str(mask), 16, [size])
    with torch.no_grad():
        mod.eval_video_tracking_davis(args, model, [str(f) for f in frames], frames[0].parent.name, first_seg,
                                      seg_ori, palette)  # fmt: skip
    t = time.perf_counter() - t0
    mod.read_frame, mod.extract_feature, mod.label_propagation = read_frame, extract, propagate
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        torch.save({"feats": torch.stack(feats), "soft": soft}, keep / f"{frames[0].parent.name}.pt")
    return t, encoder_s[0]


def run_siammae(mode: str, seq: str, data: Path, weights: Path, out: Path, size: int, threads: int):
    """One siammae process on one sequence, as a user runs it; -> (wall seconds, process start included; seconds
    of the encode stage from siammae-track's report, None for siammae-eval)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads), SIAMMAE_OFFLINE="1")
    bindir = Path(sys.executable).parent
    common = ["--ckpt", str(weights), "--preset", "dino", "--device", "cpu", "--size", str(size)]
    if mode.startswith("track"):
        cmd = [str(bindir / "siammae-track"), str(data / "JPEGImages/480p" / seq),
               "--mask", str(data / "Annotations/480p" / seq / "00000.png"), "--out", str(out),
               "--report", str(out.parent / f"{seq}-report.json"), *common]  # fmt: skip
        if mode.endswith("bf16"):
            cmd += ["--dtype", "bf16"]
        elif mode.endswith("sdpa"):
            cmd += ["--attention", "sdpa"]  # fp32, the fused attention instead of DINO's order
    else:
        root = out.parent / "davis_root"
        if not root.exists():
            for part in ("JPEGImages", "Annotations"):
                (root / part).mkdir(parents=True)
                (root / part / "480p").symlink_to(data / part / "480p")
            (root / "ImageSets/2016").mkdir(parents=True)
        (root / "ImageSets/2016/val.txt").write_text(seq + "\n")
        cmd = [str(bindir / "siammae-eval"), "davis", "--year", "2016", "--root", str(root), "--out", str(out),
               "--sequences", seq, *common]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    report = out.parent / f"{seq}-report.json"
    encode = json.loads(report.read_text())["time"]["stages"]["encode"]["seconds"] if report.exists() else None
    return wall, encode


def masks_in(folder: Path, seq: str, stems: list[str]) -> list[np.ndarray]:
    """The PNGs of a run (siammae-eval nests them under a sequence folder somewhere in --out)."""
    hits = [p for p in folder.rglob(f"{stems[-1]}.png") if p.parent.name == seq or p.parent == folder]
    if not hits:
        raise FileNotFoundError(f"no {stems[-1]}.png for {seq} under {folder}")
    return [np.asarray(Image.open(hits[0].parent / f"{s}.png")) for s in stems]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dino-repo", type=Path, required=True, help="checkout of facebookresearch/dino")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "davis2016")
    ap.add_argument("--sequences", default="blackswan,car-shadow,soapbox")
    ap.add_argument("--size", type=int, default=480, help="short side (DINO's scale_size)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"siammae runs, of {MODES}")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--name", default="dino_agreement-cpu")
    ap.add_argument("--keep", type=Path, help="save DINO's per-frame features and soft labels here")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    torch.set_num_threads(args.threads)
    mod, vits = load_dino(args.dino_repo.resolve())
    torch.manual_seed(0)
    model = vits.vit_small(patch_size=16, num_classes=0).eval()  # DINO's own random initialisation
    meta = environment()
    meta["load_average_start"] = list(os.getloadavg())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = tmp / "vits16_random_seed0.pth"
        torch.save(model.state_dict(), weights)
        for seq in args.sequences.split(","):
            frames = sorted((args.data / "JPEGImages/480p" / seq).glob("*.jpg"))
            stems = [f.stem for f in frames]
            mask = args.data / "Annotations/480p" / seq / "00000.png"
            load = os.getloadavg()[0]
            t_dino, enc_dino = run_dino(mod, model, frames, mask, tmp / "dino", args.size, args.keep)
            theirs = masks_in(tmp / "dino" / seq, seq, stems)
            print(f"{seq}: DINO's script {t_dino:.1f} s ({len(frames)} frames; its encoder {enc_dino:.1f} s)",
                  flush=True)  # fmt: skip
            for mode in modes:
                out = tmp / mode / seq
                t, enc = run_siammae(mode, seq, args.data, weights, out, args.size, args.threads)
                ours = masks_in(out, seq, stems)
                a = np.array([np.mean((x > 0) == (y > 0)) for x, y in zip(theirs[1:], ours[1:], strict=True)])
                row = dict(sequence=seq, frames=len(frames), mode=mode, mean=float(a.mean()), worst=float(a.min()),
                           identical=int((a == 1).sum()), dino_s=t_dino, siammae_s=t, speedup=t_dino / t,
                           dino_encoder_s=enc_dino, siammae_encode_s=enc,
                           load_average=[load, os.getloadavg()[0]])  # fmt: skip
                rows.append(row)
                print(f"  {mode}: {100 * row['mean']:.4f} % agree (worst frame {100 * row['worst']:.4f} %, "
                      f"{row['identical']}/{len(a)} identical), {t:.1f} s, {t_dino / t:.2f}x", flush=True)  # fmt: skip
            write(args, meta, rows)


def _seconds(value) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def write(args, meta: dict, rows: list[dict]) -> None:
    meta["load_average_end"] = list(os.getloadavg())
    cmd = "python benchmarks/dino_agreement.py --dino-repo DINO " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (("sequences", args.sequences), ("size", args.size),
                                                    ("modes", args.modes), ("threads", args.threads))
    ) + ("" if args.name == "dino_agreement-cpu" else f" --name {args.name}")  # fmt: skip
    md = [
        f"# `--preset dino` vs DINO's eval_video_segmentation.py: whole DAVIS sequences, short side {args.size}, CPU",
        "",
        f"`{cmd}` (DINO: a checkout of facebookresearch/dino; its script with `.cuda()` removed). Same random "
        "ViT-S/16 (DINO's `vit_small`, seed 0) both sides, saved in DINO's format. Agreement: mask pixels equal "
        "(object vs background), frames 1.. (frame 0 is the given mask). Time: wall seconds for the whole sequence, "
        "DINO's function in process, siammae as a fresh process (start-up and model load included), back to back "
        f"on {args.threads} threads.",
        "",
        "DINO encoder s: the time inside DINO's `extract_feature` (its ViT forward, one frame at a time, with "
        "glibc's default allocator: page faults on its large activations, whose cost varies from run to run). "
        "siammae encode s: the encode stage of the siammae-track report (the same operations, one frame at a time, "
        "the allocator tuned).",
        "",
        "| sequence | frames | siammae run | pixels that agree (mean) | worst frame | frames identical | DINO s | "
        "DINO encoder s | siammae s | siammae encode s | speed-up | load avg (before, after) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *[
            f"| {r['sequence']} | {r['frames']} | {r['mode']} | {100 * r['mean']:.4f} % | {100 * r['worst']:.4f} % | "
            f"{r['identical']} / {r['frames'] - 1} | {r['dino_s']:.1f} | {_seconds(r.get('dino_encoder_s'))} | "
            f"{r['siammae_s']:.1f} | {_seconds(r.get('siammae_encode_s'))} | "
            f"{r['speedup']:.2f}x | {r['load_average'][0]:.1f}, {r['load_average'][1]:.1f} |"
            for r in rows
        ],
        "",
        environment_markdown(meta),
    ]
    write_results(args.name, meta, rows, "\n".join(md) + "\n", size=args.size, sequences=args.sequences)


if __name__ == "__main__":
    main()
