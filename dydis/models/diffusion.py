"""The Gaussian diffusion of the latent diffusion model: schedule, q_sample, loss, DDIM.

Everything works on the VQ latent already multiplied by the scale factor (1 / std of the
first batch, DESIGN section 5); the caller scales and unscales. Timesteps are 0-based,
t in [0, T): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with abar_t = prod_{s<=t} (1 - beta_s).

- Schedule: LDM's "linear" schedule of the authors' config, betas = linspace(sqrt(0.0015),
  sqrt(0.0155), T)^2, computed in float64 and stored as float32 buffers.
- Loss: epsilon prediction, the unweighted mean absolute error (the authors' ``loss_type: l1``
  with ``l_simple_weight`` 1 and no VLB term; the paper's eq. 2 writes a weight eta_t that the
  code does not apply, DESIGN 9 row 5); the squared error as an option.
- DDIM (Song et al. 2021) on LDM's uniform grid: with c = T // S, the model is evaluated at
  t = 1, 1 + c, 1 + 2c, ... (entries past T - 1 dropped, which only happens for S = T) and
  the last step lands on the noise level abar_0, as LDM's sampler does. ``ddim_invert`` runs
  the same grid upwards with eta = 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn

from dydis.models.config import DiffusionConfig

EpsModel = Callable[..., Tensor]  # model(x_t (b, c, h, w), t (b,), context, **kwargs) -> eps (b, c, h, w)


class DiffusionLoss(NamedTuple):
    loss: Tensor  # () mean over the batch and all latent elements
    per_sample: Tensor  # (b,) mean over the latent elements of each sample (float32)
    t: Tensor  # (b,) the timesteps drawn
    noise: Tensor  # (b, c, h, w) the target eps


class DDIMOutput(NamedTuple):
    x: Tensor  # (b, c, h, w) the sample at noise level abar_0 (what LDM's sampler returns)
    pred_x0: Tensor  # (b, c, h, w) the model's last estimate of the clean latent


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Standard normal noise drawn on the generator's device, moved to ``like``'s device and dtype."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device).to(device=like.device, dtype=like.dtype)


def _per_sample(values: Tensor) -> Tensor:
    """(b,) -> (b, 1, 1, 1) for broadcasting over a latent."""
    return rearrange(values, "b -> b 1 1 1")


class GaussianDiffusion(nn.Module):
    """The fixed forward process and the samplers; it holds no trainable parameters."""

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.cfg = cfg
        betas = torch.linspace(cfg.linear_start ** 0.5, cfg.linear_end ** 0.5, cfg.timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        for name, value in (("betas", betas), ("alphas_cumprod", alphas_cumprod),
                            ("sqrt_alphas_cumprod", alphas_cumprod.sqrt()),
                            ("sqrt_one_minus_alphas_cumprod", (1.0 - alphas_cumprod).sqrt())):
            self.register_buffer(name, value.float(), persistent=False)

    @property
    def num_timesteps(self) -> int:
        return self.cfg.timesteps

    # ---- forward process and training loss ----------------------------------------------

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; x0, noise (b, c, h, w), t (b,) int."""
        t = t.to(self.sqrt_alphas_cumprod.device)
        a = _per_sample(self.sqrt_alphas_cumprod[t]).to(x0)
        s = _per_sample(self.sqrt_one_minus_alphas_cumprod[t]).to(x0)
        return a * x0 + s * noise

    def training_loss(self, model: EpsModel, x0: Tensor, context: Any, *, generator: torch.Generator | None = None,
                      t: Tensor | None = None, noise: Tensor | None = None,
                      model_kwargs: dict[str, Any] | None = None) -> DiffusionLoss:
        """The epsilon-prediction loss on a batch of scaled latents x0 (b, c, h, w).

        t ~ U{0, ..., T-1} and eps ~ N(0, I) are drawn from ``generator`` unless given;
        ``model_kwargs`` go to the model (e.g. ``generator`` for its Skip Dropout masks).
        """
        b = x0.shape[0]
        if t is None:
            device = generator.device if generator is not None else x0.device
            t = torch.randint(0, self.num_timesteps, (b,), generator=generator, device=device).to(x0.device)
        if noise is None:
            noise = _randn(tuple(x0.shape), generator, x0)
        eps = model(self.q_sample(x0, t, noise), t, context, **(model_kwargs or {}))
        diff = eps.float() - noise.float()
        error = diff.abs() if self.cfg.loss == "l1" else diff.pow(2)
        per_sample = error.mean(dim=(1, 2, 3))
        return DiffusionLoss(per_sample.mean(), per_sample, t, noise)

    # ---- DDIM ---------------------------------------------------------------------------

    def ddim_timesteps(self, steps: int | None = None) -> Tensor:
        """The model timesteps of a DDIM run, ascending: 1, 1 + c, 1 + 2c, ... with c = T // steps (int64).

        As LDM's ``make_ddim_timesteps``: when ``steps`` does not divide T the grid has
        ceil(T / c) points (334 for 300 steps), and entries past T - 1 are dropped (steps = T).
        """
        steps = steps or self.cfg.ddim_steps
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"DDIM steps must be in [1, {self.num_timesteps}], got {steps}")
        grid = torch.arange(0, self.num_timesteps, self.num_timesteps // steps) + 1
        return grid[grid < self.num_timesteps]

    def _levels(self, steps: int | None) -> tuple[Tensor, Tensor, Tensor]:
        """Grid timesteps (on the CPU: no device sync per step), abar at each and abar at the level
        below it (abar_0 under the first)."""
        ts = self.ddim_timesteps(steps)
        a = self.alphas_cumprod[ts.to(self.alphas_cumprod.device)]
        a_prev = torch.cat([self.alphas_cumprod[:1], a[:-1]])
        return ts, a, a_prev

    @torch.no_grad()
    def ddim_sample(self, model: EpsModel, context: Any, *, shape: tuple[int, ...] | None = None,
                    x_T: Tensor | None = None, steps: int | None = None, eta: float | None = None,
                    generator: torch.Generator | None = None, model_kwargs: dict[str, Any] | None = None,
                    device: torch.device | str | None = None,
                    callback: Callable[[int, int], None] | None = None) -> DDIMOutput:
        """Generate latents with DDIM.

        Parameters
        ----------
        model : the eps model; pass the EMA copy for evaluation, in eval mode (Skip Dropout off).
        context : its conditioning, e.g. latent units (b, n, d).
        shape : (b, c, h, w) of x_T when ``x_T`` is not given (then drawn from ``generator``).
        x_T : (b, c, h, w) starting noise (e.g. from ``ddim_invert``).
        device : where a drawn x_T goes (default: this module's buffers).
        steps, eta : default ``cfg.ddim_steps`` / ``cfg.ddim_eta``; eta 0 is deterministic, eta 1
            has DDPM's posterior variance; the extra noise comes from ``generator``.
        callback : called with (step done, steps) after every step, for progress.

        Returns
        -------
        DDIMOutput: x and pred_x0, (b, c, h, w).
        """
        eta = self.cfg.ddim_eta if eta is None else eta
        if x_T is None:
            if shape is None:
                raise ValueError("ddim_sample needs shape or x_T")
            x_T = _randn(tuple(shape), generator, self.alphas_cumprod.new_empty((), device=device))
        x = x_T
        ts, a, a_prev = self._levels(steps)
        grid = ts.tolist()
        n = len(grid)
        pred_x0 = x
        for done, i in enumerate(reversed(range(n)), start=1):
            t = torch.full((x.shape[0],), grid[i], device=x.device, dtype=torch.long)
            eps = model(x, t, context, **(model_kwargs or {})).float()
            at, ap = a[i], a_prev[i]
            pred_x0 = (x.float() - (1 - at).sqrt() * eps) / at.sqrt()
            sigma = eta * ((1 - ap) / (1 - at) * (1 - at / ap)).sqrt()
            x_next = ap.sqrt() * pred_x0 + (1 - ap - sigma ** 2).clamp(min=0).sqrt() * eps
            if eta > 0:
                x_next = x_next + sigma * _randn(tuple(x.shape), generator, x_next)
            x = x_next.to(x_T.dtype)
            if callback is not None:
                callback(done, n)
        return DDIMOutput(x, pred_x0.to(x_T.dtype))

    @torch.no_grad()
    def ddim_invert(self, model: EpsModel, x0: Tensor, context: Any, *, steps: int | None = None,
                    model_kwargs: dict[str, Any] | None = None,
                    callback: Callable[[int, int], None] | None = None) -> Tensor:
        """Deterministic DDIM encoding (eta = 0) of latents x0 (b, c, h, w) into x_T (b, c, h, w).

        x0 is taken at the sampler's final noise level abar_0; each step evaluates the model at
        the current level and moves the DDIM update up to the next grid level, so
        ``ddim_sample(x_T=ddim_invert(x0))`` returns x0 up to the discretisation error.
        """
        ts, a, a_prev = self._levels(steps)
        prev_t = [0] + ts.tolist()[:-1]  # the timestep of each step's starting level
        x = x0.float()
        for i in range(len(prev_t)):
            t = torch.full((x.shape[0],), prev_t[i], device=x.device, dtype=torch.long)
            eps = model(x.to(x0.dtype), t, context, **(model_kwargs or {})).float()
            ap, at = a_prev[i], a[i]
            pred_x0 = (x - (1 - ap).sqrt() * eps) / ap.sqrt()
            x = at.sqrt() * pred_x0 + (1 - at).sqrt() * eps
            if callback is not None:
                callback(i + 1, len(ts))
        return x.to(x0.dtype)

