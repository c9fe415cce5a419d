"""Spreading a batch of videos over processes (``torchrun``): which rank tracks which video.

Every rank computes the same split from the same manifest (no communication): the videos sorted by frame count,
longest first, each given to the rank with the fewest frames so far (the LPT rule, within 4/3 of the best
balance). Each video has its own output folder, so no two ranks ever write the same file. Ranks themselves
(parsing torchrun's environment, meeting at the end) are :mod:`siammae.torchrun`.
"""

from __future__ import annotations


def shard(sizes: list[int], world: int) -> list[list[int]]:
    """Indices of the items each of ``world`` ranks takes, balanced by ``sizes`` (frames), each list in item order.

    >>> shard([10, 1, 1, 8], 2)
    [[0], [1, 2, 3]]
    """
    loads = [0] * world
    parts: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(world), key=lambda r: (loads[r], r))
        parts[r].append(i)
        loads[r] += sizes[i]
    return [sorted(p) for p in parts]
