"""`ShardSampler`: a training order that reads shards a few chunks at a time, the same for any
number of processes, resumable mid-epoch."""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence

import numpy as np
import torch

from mtl_lightning.data.base import ResumableSampler

__all__ = ["ShardSampler", "chunk_local_order", "contiguous_chunks", "lane_order"]


def chunk_local_order(
    chunks: Sequence[Hashable], seed: int, lanes: int = 4, window: int = 4
) -> list[int]:
    """A seeded order of ``range(len(chunks))`` that reads few chunks at a time.

    ``chunks[i]`` names the chunk sample ``i`` is stored in. The chunks are permuted and dealt
    to ``lanes`` lanes (each chunk to the lane holding the fewest samples so far); each lane
    reads its chunks ``window`` at a time, the samples of a window in random order; the lanes
    are interleaved sample by sample. So position ``p`` comes from lane ``p % lanes`` (until
    the shorter lanes run out), and a process that takes every ``world``-th position, with
    ``world`` dividing ``lanes``, reads only its own lanes' chunks, ``window`` of them at a time.

    Example:
        >>> chunks = ["a", "a", "b", "b", "c", "c", "d", "d"]
        >>> order = chunk_local_order(chunks, seed=0, lanes=2, window=1)
        >>> even, odd = ({chunks[i] for i in order[r::2]} for r in (0, 1))
        >>> sorted(order) == list(range(8)), len(even), even.isdisjoint(odd)
        (True, 2, True)
    """
    groups: dict[Hashable, list[int]] = {}
    for i, c in enumerate(chunks):
        groups.setdefault(c, []).append(i)
    members = [np.asarray(m, dtype=np.int64) for m in groups.values()]
    return lane_order(members, seed, lanes, window).tolist()


def contiguous_chunks(n: int, size: int) -> list[np.ndarray]:
    """The members of chunks of ``size`` consecutive samples (the last may be shorter).

    Example:
        >>> [m.tolist() for m in contiguous_chunks(5, 2)]
        [[0, 1], [2, 3], [4]]
    """
    if size < 1:
        raise ValueError(f"a chunk holds at least 1 sample, got {size}")
    return [np.arange(s, min(s + size, n), dtype=np.int64) for s in range(0, n, size)]


def lane_order(
    members: Sequence[np.ndarray], seed: int, lanes: int = 4, window: int = 4
) -> np.ndarray:
    """:func:`chunk_local_order` of chunks given by their members (sample indices), as an
    array: 8 bytes per sample, whatever the number of samples."""
    if lanes < 1 or window < 1:
        raise ValueError(f"lanes and window must be >= 1, got {lanes} and {window}")
    g = torch.Generator().manual_seed(seed)
    dealt: list[list[int]] = [[] for _ in range(lanes)]
    loads = [0] * lanes
    for c in torch.randperm(len(members), generator=g).tolist():
        lane = loads.index(min(loads))
        dealt[lane].append(c)
        loads[lane] += len(members[c])
    streams, keys = [], []
    for lane, lane_chunks in enumerate(dealt):
        pieces = []
        for start in range(0, len(lane_chunks), window):
            idx = np.concatenate([members[c] for c in lane_chunks[start : start + window]])
            pieces.append(idx[torch.randperm(len(idx), generator=g).numpy()])
        stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
        streams.append(stream)
        keys.append(np.arange(len(stream), dtype=np.int64) * lanes + lane)
    # the lanes interleaved sample by sample: position k of every lane, lane by lane
    return np.concatenate(streams)[np.argsort(np.concatenate(keys), kind="stable")]


class ShardSampler(ResumableSampler):
    """:class:`~mtl_lightning.data.base.ResumableSampler` with :func:`chunk_local_order` as the
    epoch's order (seeded with ``seed + epoch``) instead of a full permutation; it yields
    ``(index, epoch)`` as :class:`~mtl_lightning.data.image_sets.EpochTaggedSampler` does
    (random crops seeded per sample and epoch).

    The order does not depend on the number of processes, and rank ``r`` takes every
    ``world``-th position as ``DistributedSampler`` does (padded the same way), so the global
    batches of ``N`` processes are those of one process with ``N`` times the batch size. With
    ``lanes`` a multiple of the world size, each rank reads disjoint chunks. Skipping and
    ``len()`` are the parent's: resume is exact.

    Example:
        >>> chunks = [i // 4 for i in range(16)]
        >>> order = lambda world, rank: [i for i, _ in ShardSampler(
        ...     range(16), chunks, lanes=2, window=1, num_replicas=world, rank=rank)]
        >>> one, r0, r1 = order(1, 0), order(2, 0), order(2, 1)
        >>> one[0::2] == r0 and one[1::2] == r1, {i // 4 for i in r0}.isdisjoint(i // 4 for i in r1)
        (True, True)
    """

    def __init__(
        self,
        dataset: Sequence[object],
        chunks: Sequence[Hashable] | int,
        lanes: int = 4,
        window: int = 4,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if isinstance(chunks, int):  # consecutive samples: chunks of that many
            self.members = contiguous_chunks(len(dataset), chunks)
        else:
            if len(chunks) != len(dataset):
                raise ValueError(f"{len(chunks)} chunk names for {len(dataset)} samples")
            groups: dict[Hashable, list[int]] = {}
            for i, c in enumerate(chunks):
                groups.setdefault(c, []).append(i)
            self.members = [np.asarray(m, dtype=np.int64) for m in groups.values()]
        if lanes < 1 or window < 1:
            raise ValueError(f"lanes and window must be >= 1, got {lanes} and {window}")
        super().__init__(dataset, shuffle, seed, drop_last, num_replicas, rank)
        self.lanes, self.window = lanes, window

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = int(self.epoch)
        return ((i, epoch) for i in self._indices().tolist())

    def _indices(self) -> np.ndarray:
        skip, self._skip = self._skip, 0
        n = sum(len(m) for m in self.members)
        if self.shuffle:
            indices = lane_order(self.members, self.seed + self.epoch, self.lanes, self.window)
        else:
            indices = np.arange(n, dtype=np.int64)
        if not self.drop_last:  # DistributedSampler's padding: repeat the start of the order
            padding = self.total_size - len(indices)
            if padding > 0:
                indices = np.concatenate([indices, np.resize(indices, padding)])
        else:
            indices = indices[: self.total_size]
        return indices[self.rank : self.total_size : self.num_replicas][skip:]
