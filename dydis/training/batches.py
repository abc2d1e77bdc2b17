"""Deterministic shuffled batches, so that a resumed run sees exactly the batches it would have.

The order of epoch ``e`` is a permutation drawn from a generator seeded with ``(seed, e)``;
the position in the stream is a pure function of the micro-batch counter. Each data-parallel
process takes its own slice of every global batch.
"""

from __future__ import annotations

import numpy as np
import torch


class BatchStream:
    def __init__(self, n_rows: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if n_rows < batch_size * world_size:
            raise ValueError(f"{n_rows} training rows cannot fill one batch of {batch_size} x {world_size} processes")
        self.n_rows, self.batch_size, self.seed = n_rows, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * world_size
        self.batches_per_epoch = n_rows // self.global_batch  # drop the ragged end, as a DataLoader with drop_last
        self._epoch, self._order = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.n_rows, generator=generator)
        return self._order

    def batch(self, index: int) -> torch.Tensor:
        """Row positions (batch_size,) of this process's part of global micro-batch ``index``."""
        epoch, within = divmod(index, self.batches_per_epoch)
        start = within * self.global_batch + self.rank * self.batch_size
        return self._permutation(epoch)[start: start + self.batch_size]

    def epoch_of(self, index: int) -> float:
        return index / self.batches_per_epoch


def to_model_input(images_uint8: torch.Tensor) -> torch.Tensor:
    """(b, 64, 64, 3) uint8 -> (b, 3, 64, 64) float in [-1, 1]."""
    return images_uint8.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_images(pixels: torch.Tensor) -> np.ndarray:
    """(b, 3, 64, 64) float in [-1, 1] -> (b, 64, 64, 3) uint8 on the CPU, the inverse of
    ``to_model_input``; values outside [-1, 1] (decoders overshoot) are clipped first."""
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
