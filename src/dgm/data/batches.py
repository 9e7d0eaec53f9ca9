"""Seeded, stateless batching: batch k is a pure function of (seed, k), so a run resumes exactly."""
from __future__ import annotations

from typing import Iterator

import torch

from dgm.data.base import ImageData

_SEED_STRIDE = 1_000_003  # a prime, so (seed, epoch) pairs map to distinct generator seeds in practice


class Batches:
    """Stateless, seeded in-memory batch iterator: batch number k is a pure function of (seed, k),
    so training can resume exactly.

    Batch ``k`` belongs to epoch ``k // len(self)``. Each epoch uses the permutation
    ``torch.randperm(N, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))``; the global
    batch ``j`` is ``perm[j*B:(j+1)*B]``. With ``world_size > 1`` each rank gets the contiguous shard
    ``global[rank*B/W:(rank+1)*B/W]`` (``B`` must divide by ``W``), so the ranks' shards concatenate to
    the global batch. With ``drop_last=False`` the last, shorter batch is shared out as evenly as
    possible (``torch.tensor_split``). Returns uint8 images and int64 labels (or None).
    """

    def __init__(self, data: ImageData, batch_size: int, seed: int = 0, drop_last: bool = True,
                 rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} must be divisible by world_size {world_size}")
        n = len(data)
        per_epoch = n // batch_size if drop_last else -(-n // batch_size)
        if per_epoch == 0:
            raise ValueError(f"{n} images give no batch of {batch_size} (drop_last={drop_last})")
        self.data, self.batch_size, self.seed, self.drop_last = data, batch_size, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self._per_epoch = per_epoch
        self._perm: tuple[int, torch.Tensor] | None = None  # last epoch's permutation; a cache, not state

    def __len__(self) -> int:
        """Batches per epoch."""
        return self._per_epoch

    def permutation(self, epoch: int) -> torch.Tensor:
        """The index permutation used for ``epoch``."""
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * _SEED_STRIDE + epoch)
            self._perm = (epoch, torch.randperm(len(self.data), generator=g))
        return self._perm[1]

    def indices(self, k: int) -> torch.Tensor:
        """Dataset indices of this rank's share of batch ``k``."""
        if k < 0:
            raise ValueError(f"batch number must be >= 0, got {k}")
        epoch, j = divmod(k, self._per_epoch)
        b = self.batch_size
        idx = self.permutation(epoch)[j * b:(j + 1) * b]
        if self.world_size == 1:
            return idx
        # For full batches tensor_split gives exactly global[rank*B/W:(rank+1)*B/W].
        return torch.tensor_split(idx, self.world_size)[self.rank]

    def get(self, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Batch ``k`` overall: ``(images uint8 (b, C, H, W), labels int64 (b,) or None)``."""
        idx = self.indices(k)
        labels = self.data.labels
        return self.data.images[idx], (labels[idx] if labels is not None else None)

    def epoch(self, e: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Iterate over the batches of epoch ``e`` (batch numbers ``e*len .. (e+1)*len - 1``)."""
        for j in range(self._per_epoch):
            yield self.get(e * self._per_epoch + j)
