"""What a run shows while it trains: progress bar, JSONL log, TensorBoard (when installed), reconstruction PNGs.

Only rank 0 builds a :class:`Monitor`. ``log.jsonl`` holds one JSON object per ``log_every`` steps (step, epoch,
loss, lr, samples/s, GPU memory, skipped videos); ``vis/step_XXXXXXXX.png`` shows, for a few pairs of the current
batch, f1 | masked f2 | prediction | target, so that people can see what the model learns.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from siammae.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from siammae.errors import OutputError
from siammae.io import atomic_write, open_append, read_jsonl, write_error, write_text
from siammae.model.siammae import patchify, unpatchify


class Monitor:
    def __init__(self, out: Path, total_steps: int, start_step: int, quiet: bool = False):
        self.out = Path(out)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(self.out, e) from e
        self.log_path = self.out / "log.jsonl"
        self.quiet = quiet
        self._truncate_log(start_step)
        self._log_file = open_append(self.log_path)  # kept open for the run; never through a planted link
        self.tb = _tensorboard(self.out / "tb")
        self.bar = None
        if not quiet:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", file=sys.stderr, dynamic_ncols=True)
            self.bar.set_postfix_str("waiting for the first batch")
        self.bad_videos: dict[str, str] = {}  # path -> first reason
        self.skip_events = 0
        self.short_pairs = 0

    def _truncate_log(self, start_step: int) -> None:
        """On resume, drop records past the checkpoint: the steps after it are trained again."""
        if self.log_path.is_symlink():
            raise OutputError(f"cannot write {self.log_path}: it is a symbolic link (never written through)")
        if not self.log_path.exists():
            return
        lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        records = read_jsonl(self.log_path)  # a torn last line (a run killed mid-write) is dropped
        keep = [r for r in records if r.get("step", 0) <= start_step]
        if len(keep) != len(lines):
            write_text(self.log_path, "".join(json.dumps(r) + "\n" for r in keep))

    # ------------------------------------------------------------------------------------------------- output
    def info(self, msg: str) -> None:
        """A line on stderr that does not break the progress bar."""
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr)

    def warn(self, msg: str) -> None:
        """A warning: printed even with --quiet."""
        if self.bar is not None:
            self.bar.write(f"warning: {msg}", file=sys.stderr)
        else:
            print(f"warning: {msg}", file=sys.stderr)

    def data_report(self, skipped: list[tuple[str, str]], short: int) -> None:
        """Count the unreadable videos of a batch; warn once per file, keep the list in bad_videos.txt."""
        self.skip_events += len(skipped)
        self.short_pairs += short
        new = False
        for path, reason in skipped:
            if path not in self.bad_videos:
                self.bad_videos[path] = reason
                self.warn(f"skipped unreadable video ({len(self.bad_videos)} so far): {reason}")
                new = True
        if new:
            write_text(self.out / "bad_videos.txt", "".join(f"{p}\t{r}\n" for p, r in self.bad_videos.items()))

    def progress(self, step: int, loss: float, lr: float, pairs_per_s: float | None = None) -> None:
        """Advance the bar to ``step``: loss, lr and frame pairs per second (all processes, since the start)."""
        if self.bar is not None:
            post = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}"}
            if pairs_per_s is not None:
                post["pairs/s"] = f"{pairs_per_s:.1f}"
            self.bar.set_postfix(post, refresh=False)
            first = self.bar.n == self.bar.initial  # the run's first step is shown whatever tqdm's print interval
            self.bar.update(step - self.bar.n)
            if first:
                self.bar.refresh()

    def log(self, record: dict) -> None:
        record = {
            **record,
            "bad_videos": len(self.bad_videos),
            "skipped": self.skip_events,
            "short_pairs": self.short_pairs,
        }
        try:
            self._log_file.write(json.dumps(record) + "\n")
            self._log_file.flush()
        except OSError as e:
            raise write_error(self.log_path, e) from e
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, record["step"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        with contextlib.suppress(OSError):  # a failed flush: log() has already reported it
            self._log_file.close()
        if self.tb is not None:
            self.tb.close()

    # ------------------------------------------------------------------------------------------ visualisation
    def save_reconstruction(
        self, step: int, f1, f2, pred, mask, patch_size: int, norm_pix_loss: bool, rows: int = 4
    ) -> Path:
        path = self.out / "vis" / f"step_{step:08d}.png"
        grid = reconstruction_grid(f1[:rows], f2[:rows], pred[:rows], mask[:rows], patch_size, norm_pix_loss)
        with atomic_write(path) as tmp:
            Image.fromarray(grid).save(tmp)
        if self.tb is not None:
            self.tb.add_image("train/reconstruction", grid, step, dataformats="HWC")
        return path


def _tensorboard(folder: Path):
    """A SummaryWriter when tensorboard is installed, else None (it is optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder))


@torch.no_grad()
def reconstruction_grid(f1, f2, pred, mask, patch_size: int, norm_pix_loss: bool, pad: int = 2) -> np.ndarray:
    """Rows of f1 | masked f2 | prediction | target as an (H, W, 3) uint8 image.

    f1, f2 (B, 3, S, S) ImageNet-normalised; pred (B, L, p*p*3) in the loss's space, de-normalised with the target
    patches' mean and variance when ``norm_pix_loss``; mask (B, L), 1 = masked. The prediction column shows the
    predicted pixels at the masked patches and f2 at the visible ones (the loss ignores visible patches).
    Masked patches of f2 are shown grey.
    """
    f1, f2, pred, mask = (t.detach().float().cpu() for t in (f1, f2, pred, mask))
    p = patch_size
    h, w = f2.shape[-2] // p, f2.shape[-1] // p
    target = patchify(f2, p)  # (B, L, p*p*3)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        pred = pred * (var + 1.0e-6) ** 0.5 + mean
    m = mask.unsqueeze(-1)  # (B, L, 1)
    pred_img = unpatchify(pred * m + target * (1 - m), p, h, w)  # (B, 3, S, S)
    grey = torch.tensor([(0.5 - a) / s for a, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]).repeat(p * p)
    masked_img = unpatchify(target * (1 - m) + grey * m, p, h, w)

    def to_uint8(x):  # (B, 3, S, S) normalised -> (B, S, S, 3) uint8
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    cols = [to_uint8(x) for x in (f1, masked_img, pred_img, f2)]
    B, S = f2.shape[0], f2.shape[-1]
    out = np.full((B * (S + pad) + pad, 4 * (S + pad) + pad, 3), 255, dtype=np.uint8)
    for b in range(B):
        for c, col in enumerate(cols):
            y, x = pad + b * (S + pad), pad + c * (S + pad)
            out[y : y + S, x : x + S] = col[b]
    return out
