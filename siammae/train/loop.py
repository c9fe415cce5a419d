"""The pretraining loop: ``train(TrainConfig) -> TrainResult``, one process or many under torchrun.

Read top to bottom: set-up (process group, model, data, optimiser, precision), resume, then the loop of optimiser
steps; each step runs ``accum_steps`` micro-batches (``no_sync`` on all but the last under DDP), checks the loss
of every micro-batch (a NaN / inf stops the run with the last good checkpoint left in place), unscales and clips
if asked, steps AdamW, then logs, draws and saves on schedule. Rank 0 logs and saves.
Checks that need no model (data, ``--out``, the machine) are :mod:`siammae.train.preflight`'s.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from siammae import torchrun as D
from siammae.data.shards import PreparedFrames, is_prepared
from siammae.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from siammae.device import autocast_dtype
from siammae.errors import InputError, SiamMAEError
from siammae.io import write_json
from siammae.memory import check_pair_fits
from siammae.model.checkpoint import init_encoder, save_checkpoint, unwrap
from siammae.model.registry import model_config
from siammae.model.siammae import SiamMAE
from siammae.output_folder import OutputFolder
from siammae.train.config import TrainConfig
from siammae.train.data import PairDataset, collate, find_videos
from siammae.train.launch import init_distributed, load_init
from siammae.train.monitor import Monitor
from siammae.train.optim import build_optimizer, cut_schedule_warning, lr_at, set_lr
from siammae.train.preflight import capped_workers, check_machine, check_run, usable_cores
from siammae.train.prepared_data import PreparedPairDataset, collate_jpeg, decode_views
from siammae.train.sampler import StepSampler, shard_seed
from siammae.train.state import latest_checkpoint, load_training_checkpoint, save_training_checkpoint, set_rng_state

# settings that define a run: resuming with a different value would silently train something else
RUN_IDENTITY = (
    "model",
    "input_size",
    "batch_size",
    "repeat",
    "seed",
    "mask_ratio_f1",
    "mask_ratio_f2",
    "masking",
    "encoder_mode",
    "decoder",
)


class TrainingDivergedError(SiamMAEError):
    """The loss (or a weight) became NaN or infinite."""


class TrainingInterrupted(SiamMAEError):
    """SIGINT / SIGTERM stopped the run; a checkpoint of the last finished step was saved first."""

    def __init__(self, message: str, step: int, checkpoint: Path | None):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


class StopSignals:
    """While active, SIGINT and SIGTERM ask the run to stop at the end of the current step (``requested``) instead
    of killing it; a second signal kills it as before (the default handlers are back). Only in the main thread."""

    def __init__(self):
        self.requested: str | None = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name
        for sig, old in self._old.items():  # a second Ctrl-C stops at once
            signal.signal(sig, old)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


@dataclass(frozen=True)
class TrainResult:
    out: Path
    step: int  # optimiser steps done, counted over the whole run (resumes included)
    epoch: float
    loss: float | None  # loss of the last step, mean over processes
    losses: tuple[float, ...]  # loss of every step this call trained
    checkpoint: Path | None  # the latest training checkpoint
    model_path: Path | None  # OUT/model.pt: the weights for tracking / export / evaluation
    bad_videos: int  # unreadable videos met (distinct files, rank 0's count when distributed)
    samples_per_s: float  # frame pairs per second over all processes, this call


def train(cfg: TrainConfig, changes: dict | None = None) -> TrainResult:
    """Pretrain SiamMAE as ``cfg`` says; under torchrun every process calls this with the same ``cfg``.

    ``changes``: the settings a ``--resume`` changed (:func:`siammae.train.resume.resume_config`), recorded in
    ``run.json``. SIGINT / SIGTERM save a checkpoint of the last finished step, then raise
    :class:`TrainingInterrupted`; checkpoints are also saved every ``save_minutes`` of wall time."""
    check_run(cfg)  # data present, --out not another run's: before joining a group or building a model
    owns_group = not dist.is_initialized()
    info, device = init_distributed(cfg.device)
    try:
        check_machine(cfg, device.type)
        # rank 0 claims --out: one run at a time, no planted links, no temp files of a killed run
        with OutputFolder(cfg.out) if info.is_main else contextlib.nullcontext():
            return Trainer(cfg, info, device, changes).run()
    finally:
        if owns_group:
            D.close_distributed()


class Trainer:
    def __init__(self, cfg: TrainConfig, info: D.Rank, device: torch.device, changes: dict | None = None):
        self.cfg, self.info, self.device = cfg, info, device
        self.changes = changes or {}
        self.out = Path(cfg.out)
        # --- model: the same initial weights on every rank (DDP broadcasts rank 0's anyway)
        try:
            self.model_cfg = model_config(cfg.model, **cfg.model_overrides())
        except ValueError as e:
            raise InputError(f"--model {cfg.model}: {e}") from e
        check_pair_fits(self.model_cfg, self.device)  # before the model exists: a typo in --input-size
        torch.manual_seed(cfg.seed)
        # --init: the encoder from pretrained weights (strict), the decoder fresh; on resume too, so that the model
        # has the same position table kind (a learned DINO table trains, a sin-cos one does not)
        self.init = load_init(cfg.init, info) if cfg.init else None
        if self.init is not None:
            self.model_cfg = replace(self.model_cfg, pos_embed=self.init.pos_embed)
        self.model = SiamMAE(self.model_cfg)
        if self.init is not None:
            init_encoder(self.model.encoder, self.init)
        self.model.to(self.device)

        # --- data: a prepared data set (siammae-prepare) is read through its index by every rank; otherwise rank 0
        # scans the folders once and the others get its list
        self.dataset, self.collate = self._dataset()
        try:
            self.sampler = StepSampler(
                len(self.dataset), cfg.batch_size // cfg.repeat, info.world, info.rank, cfg.accum_steps, cfg.seed
            )
        except ValueError as e:
            raise InputError(f"--batch-size {cfg.batch_size}: {e}") from e
        self.steps_per_epoch = self.sampler.steps_per_epoch
        # the schedule's length and warm-up in steps; --max-steps stops early without shortening it
        self.total_steps, self.warmup_steps = cfg.schedule_steps(self.steps_per_epoch)
        self.stop_step = min(self.total_steps, cfg.max_steps or self.total_steps)

        # --- optimiser and precision
        self.optimizer = build_optimizer(self.model, cfg.peak_lr, cfg.weight_decay, cfg.betas, self.device)
        try:
            self.amp_dtype = autocast_dtype(cfg.precision, self.device)
        except ValueError as e:
            raise InputError(f"--precision {cfg.precision}: {e}") from None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255
        self.mask_gen = torch.Generator(device=self.device)  # reseeded for every shard, see train_step

        # --- resume
        check_run(cfg)  # again, now that --out is held: another run may have written there meanwhile
        latest, resumed = self._resume()

        self.ddp = info.distributed
        self.net = self.model
        if self.ddp:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)

        self.workers = capped_workers(cfg.workers, info.local_size)
        self.monitor = None
        if info.is_main:
            self.monitor = Monitor(self.out, self.stop_step, self.start_step, cfg.quiet)
            self._write_run_info()
            what = f"{cfg.model} on {self.device}: {cfg.batch_size} pairs per step, steps {self.start_step + 1}.."
            workers = f"{self.workers} data worker(s) per process ({cfg.workers} asked, {usable_cores()} CPU cores)"
            self.monitor.info(f"training {what}{self.stop_step} of {self.total_steps}; {workers}")
            if resumed is not None:
                self.monitor.info(f"resumed from {latest} at step {self.start_step}")
            elif cfg.resume:
                self.monitor.info(f"no checkpoint in {self.out}: starting from scratch")
        self._pending_bad, self._pending_short = [], 0  # unreadable (path, reason) and short pairs since the last log

    # --------------------------------------------------------------------------------------------- set-up
    def _dataset(self):
        cfg, info = self.cfg, self.info
        args = (self.model_cfg.img_size, cfg.seed, cfg.gap, cfg.repeat, cfg.crop_scale, cfg.augment)
        if len(cfg.data) == 1 and is_prepared(cfg.data[0]):
            decode = cfg.decode if cfg.decode != "auto" else ("device" if self.device.type == "cuda" else "cpu")
            dataset = PreparedPairDataset(PreparedFrames(cfg.data[0]), *args, decode=decode)
            return dataset, collate_jpeg if dataset.decode == "device" else collate
        if any(is_prepared(d) for d in cfg.data):
            raise InputError("--data: a prepared data set is read on its own; pass only its folder (or URL)")
        videos = D.broadcast_object(find_videos(cfg.data) if info.is_main else None, info)
        return PairDataset(videos, *args), collate

    def _resume(self) -> tuple[Path | None, dict | None]:
        """Restore the latest checkpoint in ``out``, if any -> (its path, its ``train`` entry) or (None, None)."""
        self.start_step, self.checkpoint = 0, None
        latest = latest_checkpoint(self.out)
        if latest is None:
            return None, None
        resumed = load_training_checkpoint(latest, self.model, self.optimizer, self.scaler)
        self._check_resume(latest, resumed)
        self.start_step, self.checkpoint = resumed["step"], latest
        set_rng_state(resumed["rng"])
        return latest, resumed

    def _check_resume(self, path: Path, state: dict) -> None:
        saved = state["config"]
        now = self.cfg.to_dict()
        differ = [k for k in RUN_IDENTITY if saved.get(k) != now.get(k)]
        if differ:
            what = ", ".join(f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in differ)
            raise InputError(f"--resume: {path} was trained with other settings ({what})")
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise InputError(
                f"--resume: {path} had {state['steps_per_epoch']} steps per epoch, the data now gives "
                f"{self.steps_per_epoch}; the data set changed"
            )

    def _write_run_info(self) -> None:
        resumes = _previous_resumes(self.out)
        if self.cfg.resume and self.start_step > 0:
            changed = {k: {"was": a, "now": b} for k, (a, b) in self.changes.items()}
            resumes.append({"step": self.start_step, "changed": changed})
        write_json(
            self.out / "run.json",
            {
                "resumes": resumes,
                "train": self.cfg.to_dict(),
                "model": self.model_cfg.to_dict(),
                "init": self.init.weights if self.init is not None else None,  # name / path + sha256
                "world_size": self.info.world,
                "workers": self.workers,
                "videos": len(self.dataset),
                "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps,
                "peak_lr": self.cfg.peak_lr,
                "precision": str(self.amp_dtype or torch.float32).replace("torch.", ""),
                "torch": torch.__version__,
            },
        )

    def _loader(self):
        cfg = self.cfg
        self.sampler.set_range(self.start_step, self.stop_step)
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=self.workers,
            collate_fn=self.collate,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if self.workers else None,
            # the loader draws its workers' base seed from this, not from the global RNG (we never use that seed:
            # every sample is seeded by its position, see data.py)
            generator=torch.Generator().manual_seed(cfg.seed),
            worker_init_fn=_ignore_stop_signals,
        )

    # ----------------------------------------------------------------------------------------------- loop
    def run(self) -> TrainResult:
        cfg = self.cfg
        losses, window = [], []
        t0 = t_log = time.perf_counter()
        self._last_save = time.monotonic()
        pairs_per_step = cfg.batch_size
        step = self.start_step
        batches = iter(self._loader())
        model_path = None
        try:
            with StopSignals() as signals:
                step, model_path = self._loop(step, batches, signals, losses, window, t0, t_log)
        finally:
            batches = None  # shuts the DataLoader workers down now, even when an error is propagating
            if self.monitor is not None:
                self.monitor.close()
        elapsed = time.perf_counter() - t0
        return TrainResult(
            out=self.out,
            step=step,
            epoch=step / self.steps_per_epoch,
            loss=losses[-1] if losses else None,
            losses=tuple(losses),
            checkpoint=self.checkpoint,
            model_path=model_path,
            bad_videos=len(self.monitor.bad_videos) if self.monitor else 0,
            samples_per_s=len(losses) * pairs_per_step / elapsed if elapsed > 0 else 0.0,
        )

    def _loop(self, step, batches, signals, losses, window, t0, t_log):
        """The optimiser steps from ``step`` to the stop step -> (last step, OUT/model.pt or None)."""
        cfg, info = self.cfg, self.info
        while step < self.stop_step:
            out, loss, grad_norm = self.train_step(step, batches)
            step += 1
            losses.append(loss)
            window.append(loss)
            if self._report(step, out, loss, grad_norm, window, t0, t_log):
                window, t_log = [], time.perf_counter()
            stop, due = self._agree(signals.requested is not None, self._save_due())
            if step % cfg.save_every == 0 or step == self.stop_step or due or stop:
                self.save(step)
            if stop:
                self._interrupted(step, signals.requested or "a signal on another process")
        self._warn_if_cut(step)
        model_path = None
        if info.is_main:
            model_path = save_checkpoint(
                self.out / "model.pt",
                self.model,
                step=step,
                train_config=cfg.to_dict(),
                init=self.init.weights if self.init is not None else None,
            )
        D.barrier(info)
        return step, model_path

    def _report(self, step, out, loss, grad_norm, window, t0, t_log) -> bool:
        """Progress bar, log record, reconstruction PNG on their schedules; True when a log record was written."""
        cfg = self.cfg
        lr = self.optimizer.param_groups[0]["lr"]
        if self.monitor is not None:
            rate = (step - self.start_step) * cfg.batch_size / max(time.perf_counter() - t0, 1e-9)
            self.monitor.progress(step, loss, lr, rate)
        logged = step % cfg.log_every == 0 or step == self.stop_step
        if logged:
            now = time.perf_counter()
            self._report_data()
            if self.monitor is not None:
                rate = len(window) * cfg.batch_size / (now - t_log)
                self.monitor.log(self._record(step, window, lr, grad_norm, rate, now - t0))
        if self.monitor is not None and cfg.vis_every and step % cfg.vis_every == 0:
            f1, f2, pred, mask = out
            self.monitor.save_reconstruction(
                step, f1, f2, pred, mask, self.model_cfg.patch_size, self.model_cfg.norm_pix_loss
            )
        return logged

    # ------------------------------------------------------------------------------------------ stopping
    def _save_due(self) -> bool:
        """A checkpoint is due by wall time (``save_minutes`` since the last one)."""
        minutes = self.cfg.save_minutes
        return bool(minutes) and time.monotonic() - self._last_save >= minutes * 60

    def _agree(self, stop: bool, due: bool) -> tuple[bool, bool]:
        """Every process stops and saves on the same step: the flags of all processes, or-ed."""
        if not self.info.distributed:
            return stop, due
        flags = D.all_reduce_max(torch.tensor([float(stop), float(due)], device=self.device), self.info)
        return bool(flags[0]), bool(flags[1])

    def _interrupted(self, step: int, signal_name: str):
        """Stop with :class:`TrainingInterrupted` after ``step``, whose checkpoint was just saved."""
        where = f"checkpoint {self.checkpoint}" if self.checkpoint else "no checkpoint (no step finished)"
        raise TrainingInterrupted(
            f"{signal_name}: training stopped after step {step} of {self.stop_step}; {where}; continue with "
            f"siammae-train --out {self.out} --resume",
            step,
            self.checkpoint,
        )

    def train_step(self, step: int, batches):
        """One optimiser step over this rank's ``accum_steps`` micro-batches -> (last micro-batch's f1, f2, pred,
        mask), the step's loss (mean over micro-batches and processes) and the gradient norm (None unless
        clipping). A non-finite loss raises :class:`TrainingDivergedError` before the optimiser step."""
        cfg = self.cfg
        lr = lr_at(step, cfg.peak_lr, cfg.min_lr, self.warmup_steps, self.total_steps)
        set_lr(self.optimizer, lr)
        self.net.train()
        shards = self.sampler.shards()
        step_loss = torch.zeros((), device=self.device)  # summed on the device: one sync per step, not per shard
        for m, shard in enumerate(shards):
            batch = next(batches)
            self._pending_bad.extend(batch["skipped"])
            self._pending_short += batch["short"]
            if "jpeg" in batch:  # prepared data, decode="device": JPEG bytes, decoded and cropped here
                batch["f1"], batch["f2"], bad = decode_views(batch, self.model_cfg.img_size, self.device)
                self._pending_bad.extend(bad)
            f1 = self._normalize(batch["f1"])  # (B, 3, S, S)
            f2 = self._normalize(batch["f2"])
            # mask noise seeded per (step, shard): the same masks after a resume and for any split of the batch
            self.mask_gen.manual_seed(shard_seed(cfg.seed, step, shard))
            last = m == len(shards) - 1
            sync = self.net.no_sync() if self.ddp and not last else contextlib.nullcontext()
            with sync:
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    out = self.net(f1, f2, generator=self.mask_gen)
                loss = out["loss"]
                self.scaler.scale(loss / len(shards)).backward()
            step_loss += loss.detach().float() / len(shards)
        # a NaN / inf in any micro-batch makes the sum non-finite; raised before the optimiser touches the weights
        value = D.all_reduce_mean(step_loss, self.info).item()
        if not math.isfinite(value):
            raise self._diverged(step, f"the loss is {value}")
        grad_norm = None
        if cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad).item()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return (f1, f2, out["pred"].detach(), out["mask"]), value, grad_norm

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 from the loader -> ImageNet-normalised float on the device."""
        x = x.to(self.device, non_blocking=True).float()
        return (x - self.mean) / self.std

    # ------------------------------------------------------------------------------------------ reporting
    def _warn_if_cut(self, step: int) -> None:
        if self.monitor is not None and step > self.start_step:
            cfg = self.cfg
            warning = cut_schedule_warning(step, self.total_steps, self.warmup_steps, cfg.peak_lr, cfg.min_lr)
            if warning:
                self.monitor.warn(warning)

    def _report_data(self) -> None:
        """Bring every rank's unreadable videos to rank 0's monitor (all ranks call this on the same steps)."""
        local = (self._pending_bad, self._pending_short)
        self._pending_bad, self._pending_short = [], 0
        gathered = D.gather(self.info, local)
        if self.monitor is not None:
            for skipped, short in gathered:
                self.monitor.data_report(skipped, short)

    def _record(self, step, window, lr, grad_norm, samples_per_s, elapsed) -> dict:
        rec = {
            "step": step,
            "epoch": round(step / self.steps_per_epoch, 4),
            "loss": sum(window) / len(window),
            "lr": lr,
            "samples_per_s": round(samples_per_s, 2),
            "time_s": round(elapsed, 2),
        }
        if grad_norm is not None:
            rec["grad_norm"] = grad_norm
        if self.scaler.is_enabled():
            rec["loss_scale"] = self.scaler.get_scale()
        if self.device.type == "cuda":
            rec["gpu_mem_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3)
        return rec

    # ---------------------------------------------------------------------------------------------- saving
    def save(self, step: int) -> None:
        """A training checkpoint at ``step`` (rank 0), unless a weight is no longer finite."""
        bad = [n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise self._diverged(step - 1, f"weights became non-finite ({', '.join(bad[:3])})")
        if self.info.is_main:
            state = {
                "config": self.cfg.to_dict(),
                "model_config": self.model_cfg.to_dict(),
                "steps_per_epoch": self.steps_per_epoch,
                "epoch": step / self.steps_per_epoch,
                "world_size": self.info.world,
                "init": self.init.weights if self.init is not None else None,
            }
            self.checkpoint = save_training_checkpoint(
                self.out, step, unwrap(self.model), self.optimizer, self.scaler, state, self.cfg.keep_last
            )
        self._last_save = time.monotonic()
        D.barrier(self.info)

    def _diverged(self, step: int, what: str) -> TrainingDivergedError:
        last = latest_checkpoint(self.out)
        keep = f"the last good checkpoint is {last}" if last else "no checkpoint was saved before it"
        return TrainingDivergedError(
            f"training stopped at step {step + 1} (epoch {step / self.steps_per_epoch:.2f}): {what}; {keep}; "
            "resume from it with a lower --blr or with --clip-grad"
        )


def _ignore_stop_signals(worker_id: int) -> None:
    """In each DataLoader worker: Ctrl-C (sent to the whole process group) and SIGTERM are the main process's to
    handle. A worker that died of them would make the main process fail at any point of a step (PyTorch raises
    from its SIGCHLD handler), even between two parameter updates of the optimiser; the main process stops the
    workers itself after saving, and a worker whose parent is gone exits on its own (PyTorch's watchdog)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _previous_resumes(out: Path) -> list:
    """The ``resumes`` list of the run's ``run.json`` so far (empty for a new run or an unreadable record)."""
    import json

    try:
        resumes = json.loads((out / "run.json").read_text()).get("resumes", [])
    except (OSError, ValueError, AttributeError):
        return []
    return resumes if isinstance(resumes, list) else []
