"""Exponential moving average of a module's weights (LDM's ``LitEma`` behaviour).

After the n-th update (n counted from 1), every parameter's average moves towards the live
value by 1 - d with d = min(decay, (1 + n) / (10 + n)): the warm-up lets the average forget
its random initialisation quickly (d = 2/11 at the first update, 0.9999 from n = 89,990 on).
Buffers (e.g. BatchNorm statistics) are copied, not averaged. The average lives in a frozen
copy of the module, so ``ema.module`` can run by itself (e.g. the EMA U-Net for sampling) and
``ema.module.state_dict()`` has the live module's keys. Pass the plain module, not a DDP or
``torch.compile`` wrapper, whose parameter names differ.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn


class EMA(nn.Module):
    """EMA of ``model``'s parameters; call ``update(model)`` after every optimiser step."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, *, warmup: bool = True):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.long))

    def current_decay(self) -> float:
        """The decay the next update will use."""
        n = int(self.num_updates) + 1
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s parameters and copy its buffers."""
        weight = 1.0 - self.current_decay()
        self.num_updates += 1
        averages, values = [], []
        for (name, avg), (name_live, live) in zip(self.module.named_parameters(), model.named_parameters(),
                                                  strict=True):
            if name != name_live:
                raise ValueError(f"EMA and model parameters differ: {name} vs {name_live}")
            if live.requires_grad:
                averages.append(avg)
                values.append(live.detach().to(avg.dtype))
            else:
                avg.copy_(live)
        if averages:
            torch._foreach_lerp_(averages, values, weight)
        for avg_buf, live_buf in zip(self.module.buffers(), model.buffers(), strict=True):
            avg_buf.copy_(live_buf)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters with the averages."""
        for avg, live in zip(self.module.parameters(), model.parameters(), strict=True):
            live.copy_(avg)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """Run ``model`` with the averaged weights inside the block; its own weights come back after."""
        saved = [p.detach().clone() for p in model.parameters()]
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, value in zip(model.parameters(), saved, strict=True):
                    p.copy_(value)

    def train(self, mode: bool = True) -> "EMA":
        """The averaged copy stays in eval mode (no Skip Dropout or dropout when it samples)."""
        super().train(mode)
        self.module.eval()
        return self

    def forward(self, *args, **kwargs):
        """Run the averaged module."""
        return self.module(*args, **kwargs)
