"""The order of training samples: a deterministic function of (seed, epoch), split into shards per step.

Each epoch is a seeded permutation of the videos, cut into steps of ``videos_per_step`` videos (the last,
incomplete step is dropped, as ``drop_last``). A step is cut into ``world_size * accum_steps`` equal shards; shard
``k = micro * world_size + rank`` is the micro-batch ``micro`` of process ``rank``. The shards of a step are the
same whichever way they are spread, so 2 processes x 1 micro-batch and 1 process x 2 micro-batches see the same
data (and, with the per-shard mask seed of :func:`shard_seed`, the same masks): the run does not depend on how many
GPUs did it. The sampler runs over a range of global steps across epoch boundaries (one DataLoader iterator for
the whole run, so workers keep prefetching through an epoch's end); resuming at a step inside an epoch restarts
the same permutation at that step.

A data set smaller than one step is tiled (its videos repeated) so that an epoch has one step; this lets a demo
train on a single clip.
"""

from __future__ import annotations

import numpy as np
import torch

from siammae.train.data import SampleKey


def shard_seed(seed: int, step: int, shard: int) -> int:
    """The seed of the mask noise of one shard of one optimiser step."""
    return int(np.random.SeedSequence([seed, step, shard]).generate_state(1, dtype=np.uint64)[0] >> 1)


class StepSampler(torch.utils.data.Sampler):
    """Batch sampler for one process: yields the micro-batches (lists of :class:`SampleKey`) of this rank for the
    global optimiser steps ``start_step .. stop_step - 1`` (set by :meth:`set_range`)."""

    def __init__(
        self,
        num_videos: int,
        videos_per_step: int,
        world_size: int = 1,
        rank: int = 0,
        accum_steps: int = 1,
        seed: int = 0,
    ):
        shards = world_size * accum_steps
        if videos_per_step % shards:
            raise ValueError(
                f"{videos_per_step} videos per step cannot be split into {world_size} processes x {accum_steps} "
                f"accumulation steps; make batch_size / repeat a multiple of {shards}"
            )
        self.num_videos = num_videos
        self.videos_per_step = videos_per_step
        self.world_size, self.rank, self.accum_steps = world_size, rank, accum_steps
        self.shard_size = videos_per_step // shards
        self.seed = seed
        self.tiles = -(-videos_per_step // num_videos)  # ceil: copies of the data set in one epoch
        self.steps_per_epoch = num_videos * self.tiles // videos_per_step
        if self.steps_per_epoch < 1:
            raise ValueError(f"{num_videos} videos do not make one step of {videos_per_step}")
        self.start_step, self.stop_step = 0, self.steps_per_epoch

    def set_range(self, start_step: int, stop_step: int) -> None:
        """Yield the micro-batches of global steps ``start_step`` to ``stop_step - 1``."""
        if not 0 <= start_step <= stop_step:
            raise ValueError(f"invalid step range {start_step}..{stop_step}")
        self.start_step, self.stop_step = start_step, stop_step

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's video order, (num_videos * tiles,) indices."""
        rng = np.random.default_rng([self.seed, epoch, 0x5EED])
        return rng.permutation(np.tile(np.arange(self.num_videos), self.tiles))

    def shards(self) -> list[int]:
        """This rank's shard ids within a step, in the order of its micro-batches."""
        return [m * self.world_size + self.rank for m in range(self.accum_steps)]

    def __iter__(self):
        epoch, order = -1, None
        for step in range(self.start_step, self.stop_step):
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                order = self.order(epoch)
            first = (step % self.steps_per_epoch) * self.videos_per_step
            for k in self.shards():
                start = first + k * self.shard_size
                yield [SampleKey(int(order[p]), epoch, p) for p in range(start, start + self.shard_size)]

    def __len__(self) -> int:
        return (self.stop_step - self.start_step) * self.accum_steps
