"""Batch samplers that are aware of the DDP rank: every rank sees the same global batches, split by rank."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


def _shard(batch: list[int], rank: int, world: int) -> list[int]:
    return batch[rank::world]


class BucketBatchSampler(Sampler[list[int]]):
    """Shuffled global batches of similar-length posts (less padding), each split across ranks.

    Indices are shuffled per epoch (``seed + epoch``), cut into pools of ``pool_factor`` global batches, sorted by
    length inside a pool, cut into global batches, and the batch order is shuffled again. Rank ``r`` takes items
    ``r, r + world, ...`` of each global batch, so a single process with the global batch size sees exactly the
    union of what the ranks see.

    Args:
        lengths: Length (subwords) of each post.
        batch_size: Global batch size.
        shuffle: Shuffle (training) or keep a deterministic length order (evaluation).
        bucket: Sort by length inside pools.
        rank: This process's rank.
        world: Number of processes.
        seed: Base seed.
        pool_factor: Global batches per sorting pool.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        bucket: bool = True,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        pool_factor: int = 50,
    ) -> None:
        if batch_size < world:
            raise ValueError(f"global batch size {batch_size} is smaller than the world size {world}")
        self.lengths, self.batch_size, self.shuffle, self.bucket = list(lengths), batch_size, shuffle, bucket
        self.rank, self.world, self.seed, self.pool_factor = rank, world, seed, pool_factor
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def global_batches(self) -> list[list[int]]:
        """This epoch's global batches (identical on every rank)."""
        rng = random.Random(self.seed + self.epoch)
        order = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(order)
        if self.bucket:
            pool = self.batch_size * self.pool_factor if self.shuffle else len(order) or 1
            order = [
                i
                for lo in range(0, len(order), pool)
                for i in sorted(order[lo : lo + pool], key=lambda i: self.lengths[i])
            ]
        batches = [order[lo : lo + self.batch_size] for lo in range(0, len(order), self.batch_size)]
        # every rank needs at least one item of every batch
        batches = [b for b in batches if len(b) >= self.world]
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield _shard(batch, self.rank, self.world)

    def __len__(self) -> int:
        n = len(self.lengths)
        full, rest = divmod(n, self.batch_size)
        return full + (1 if rest >= self.world else 0)


class RatioBatchSampler(Sampler[list[int]]):
    """Global batches with a fixed share of synthetic posts, split across ranks.

    Indices ``< n_gold`` are gold, the rest synthetic. An epoch is one pass over the gold posts; synthetic posts
    are drawn without replacement and cycled when exhausted.

    Args:
        n_gold: Number of gold posts (indices ``0..n_gold-1``).
        n_synthetic: Number of synthetic posts (indices ``n_gold..``).
        batch_size: Global batch size.
        ratio: Share of synthetic posts per batch, in (0, 1).
        rank: This process's rank.
        world: Number of processes.
        seed: Base seed.
    """

    def __init__(
        self, n_gold: int, n_synthetic: int, batch_size: int, ratio: float, rank: int = 0, world: int = 1, seed: int = 0
    ) -> None:
        if not 0 < ratio < 1:
            raise ValueError(f"synthetic_ratio must be in (0, 1), got {ratio}")
        if n_synthetic == 0:
            raise ValueError("ratio mixing needs synthetic posts (data.synthetic)")
        self.n_gold, self.n_syn, self.batch_size = n_gold, n_synthetic, batch_size
        self.n_syn_per_batch = max(1, round(batch_size * ratio))
        self.n_gold_per_batch = max(1, batch_size - self.n_syn_per_batch)
        self.rank, self.world, self.seed, self.epoch = rank, world, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n_gold / self.n_gold_per_batch)

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        gold = list(range(self.n_gold))
        rng.shuffle(gold)
        syn: list[int] = []
        for k in range(len(self)):
            while len(syn) < self.n_syn_per_batch:
                more = list(range(self.n_gold, self.n_gold + self.n_syn))
                rng.shuffle(more)
                syn += more
            batch = gold[k * self.n_gold_per_batch : (k + 1) * self.n_gold_per_batch] + syn[: self.n_syn_per_batch]
            syn = syn[self.n_syn_per_batch :]
            rng.shuffle(batch)
            yield _shard(batch, self.rank, self.world)


class EvalBatchSampler(Sampler[list[int]]):
    """Evaluation batches: rank ``r`` takes posts ``r, r + world, ...``, longest first.

    No padding and no duplicates, so metric counts summed over ranks are exact.

    Args:
        lengths: Length (subwords) of each post.
        batch_size: Posts per batch on each rank.
        rank: This process's rank.
        world: Number of processes.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, rank: int = 0, world: int = 1) -> None:
        mine = list(range(rank, len(lengths), world))
        mine.sort(key=lambda i: -lengths[i])
        self.batches = [mine[lo : lo + batch_size] for lo in range(0, len(mine), batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
