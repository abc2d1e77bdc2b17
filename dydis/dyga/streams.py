"""One random stream per latent unit.

Anchor selection fits the mixtures of many units at once, and the clusters split in a round
as segments of one EM. Were every draw taken from one shared generator, a unit's random
choices (starting points, random splits, the children's starting pair) would
depend on which other units are fitted beside it: fitting a subset of the units, or the
units in groups on several threads (``parallel.py``), would change its anchors. So each
unit draws from its own torch generator, seeded from ``numpy.random.SeedSequence``, whose
spawned children are independent streams by construction, and every draw names the unit
(stream) of each of its rows. A unit that stopped splitting draws nothing more, so its
stream does not depend on how long the others go on.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor


class UnitStreams:
    """Generators by row: row i of every draw comes from ``generators[i]``.

    Rows may share a generator (the clusters of one unit, the chunks of one cluster); such
    rows draw from it one after the other, in row order.
    """

    def __init__(self, generators: Sequence[torch.Generator]):
        self.generators = tuple(generators)

    @classmethod
    def seeded(cls, seed: int | None, units: int | Sequence[int], device: torch.device | str = "cpu") -> "UnitStreams":
        """Independent streams from ``seed`` (fresh OS entropy when ``None``) for ``units``: a
        count (units 0 to n - 1) or the units' indices in the full set, so that a process
        fitting some of the units draws what a single process fitting all of them would."""
        root = np.random.SeedSequence(seed)
        ids = range(units) if isinstance(units, int) else units
        # the children that root.spawn would make, picked by index
        children = [np.random.SeedSequence(root.entropy, spawn_key=root.spawn_key + (int(u),)) for u in ids]
        generators = []
        for child in children:
            generator = torch.Generator(device=device)
            generator.manual_seed(int(child.generate_state(1, dtype=np.uint64)[0]))
            generators.append(generator)
        return cls(generators)

    def __len__(self) -> int:
        return len(self.generators)

    def rows(self, index: Tensor | Sequence[int]) -> "UnitStreams":
        """The streams of rows ``index`` (e.g. the unit of every cluster)."""
        index = index.tolist() if isinstance(index, Tensor) else index  # sync: host-side bookkeeping
        return UnitStreams([self.generators[i] for i in index])

    def _by_generator(self) -> list[tuple[torch.Generator, list[int]]]:
        """Each distinct generator with its rows, in order of first appearance."""
        groups: dict[int, tuple[torch.Generator, list[int]]] = {}
        for row, generator in enumerate(self.generators):
            groups.setdefault(id(generator), (generator, []))[1].append(row)
        return list(groups.values())

    def rand(self, *shape: int, dtype: torch.dtype = torch.float64) -> Tensor:
        """Uniforms on [0, 1): [rows, *shape]."""
        out = None
        for generator, rows in self._by_generator():
            draw = torch.rand(len(rows), *shape, generator=generator, device=generator.device, dtype=dtype)
            if out is None:
                out = draw.new_empty(len(self), *shape)
            out[rows] = draw
        if out is None:
            return torch.empty(0, *shape, dtype=dtype)
        return out

    def multinomial(self, weights: Tensor, n_samples: int) -> Tensor:
        """``n_samples`` indices per row of ``weights`` [rows, n], without replacement: [rows, n_samples]."""
        out = torch.empty(len(self), n_samples, dtype=torch.long, device=weights.device)
        for generator, rows in self._by_generator():
            index = torch.tensor(rows, device=weights.device)
            out[index] = torch.multinomial(weights[index], n_samples, replacement=False, generator=generator)
        return out
