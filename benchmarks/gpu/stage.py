"""What every stage of ``gpu_check.py`` gets: its shapes, its time budget, and a record that is on disk at all times.

A stage runs in its own process (``gpu_check.py --stage NAME``) so that a hang or a crash costs that stage only;
the parent kills it at its budget and keeps what it had recorded. Each result and each skip is written to the
stage's JSON file the moment it is known (atomically), so the file always holds everything done so far.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from siammae.io import write_json


@dataclass(frozen=True)
class Shapes:
    """Sizes of one run: the real ones on a GPU, tiny ones for ``--quick`` (CPU, Triton interpreter)."""

    quick: bool
    device: str
    # correctness of the kernels
    topk_grids: tuple = ((30, 55), (60, 110))  # DAVIS 480x880 with patch 16 / patch 8
    topk_dim: int = 384
    topk_dtypes: tuple = ("float32", "float16", "bfloat16")
    gather_models: tuple = ("vits16", "vits8")
    gather_batch: int = 64
    # kernel speed (benchmarks/bench_propagate.py, its constants: D 384, k 7, n 20, circle radius 20)
    prop_grids: tuple = ((30, 55), (60, 110))
    prop_repeats: int = 10
    # encoder
    encoder_models: tuple = ("vits16", "vits8")
    encoder_size: tuple = (480, 880)
    encoder_batches: tuple = (1, 8, 32)
    encoder_iters: int = 10
    encoder_warmup: int = 3
    # end to end
    track_models: tuple = ("vits8", "vits16")
    track_frames: int = 50
    track_frame_size: tuple = (480, 854)  # DAVIS 480p
    track_size: int = 480
    track_dtype: str = "bf16"
    # training
    train_model: str = "vits16"
    train_batch: int = 64
    train_steps: int = 10
    train_warmup: int = 3
    loader_samples: int = 16
    loader_frame_size: tuple = (480, 854)

    @classmethod
    def quick_shapes(cls) -> Shapes:
        return cls(
            quick=True,
            device="cpu",
            topk_grids=((3, 5),),
            topk_dim=16,
            topk_dtypes=("float32",),
            gather_models=("tiny",),
            gather_batch=2,
            prop_grids=((4, 5),),
            prop_repeats=2,
            encoder_models=("tiny",),
            encoder_size=(64, 64),
            encoder_batches=(1, 2),
            encoder_iters=1,
            encoder_warmup=0,
            track_models=("tiny",),
            track_frames=4,
            track_frame_size=(72, 96),
            track_size=64,
            track_dtype="fp32",
            train_model="tiny",
            train_batch=2,
            train_steps=1,
            train_warmup=0,
            loader_samples=2,
            loader_frame_size=(72, 96),
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Stage:
    """The record of one stage: results (rows), what was skipped and why, written to ``path`` on every change."""

    name: str
    budget_s: float
    path: Path
    shapes: Shapes
    results: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    notes: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        """Seconds left of this stage's budget."""
        return self.budget_s - (time.perf_counter() - self.t0)

    def fits(self, what: str, estimate_s: float) -> bool:
        """Whether ``what`` (about ``estimate_s`` seconds) fits in the time left; if not, record it as skipped."""
        if self.left() >= estimate_s:
            return True
        left = max(self.left(), 0)
        self.skip(what, f"out of time: needs ~{estimate_s:.0f} s, {left:.0f} s left of {self.budget_s:.0f}")
        return False

    def skip(self, what: str, reason: str) -> None:
        self.skipped.append({"what": what, "reason": reason})
        print(f"[{self.name}] skipped {what}: {reason}", file=sys.stderr, flush=True)
        self.save()

    def add(self, row: dict) -> None:
        self.results.append(row)
        print(f"[{self.name}] " + json.dumps(row, default=str), file=sys.stderr, flush=True)
        self.save()

    @contextlib.contextmanager
    def case(self, what: str):
        """One sub-case: an exception in it is recorded as a failed result and the stage goes on with the next
        (a check harness reports every failure the hardware shows, not only the first)."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - recorded with its traceback, not swallowed
            self.failures.append({"what": what, "error": f"{type(e).__name__}: {e}"[:500],
                                  "traceback": traceback.format_exc(limit=6)[-2000:]})  # fmt: skip
            print(f"[{self.name}] FAILED {what}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            self.save()

    def note(self, **kw) -> None:
        self.notes.update(kw)
        self.save()

    def save(self, status: str = "running", error: str | None = None) -> None:
        record = {"stage": self.name, "status": status, "budget_s": self.budget_s,
                  "seconds": round(time.perf_counter() - self.t0, 2), "results": self.results,
                  "skipped": self.skipped, "failures": self.failures, "notes": self.notes}  # fmt: skip
        if error:
            record["error"] = error
        write_json(self.path, record)
