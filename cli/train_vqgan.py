"""`dydis train-vqgan`: a dataset artifact -> a vqgan artifact with cached latents."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dydis.cli.common import (ConfigOpt, DebugOpt, NameOpt, RestartOpt, ResumeOpt, RootOpt, RunsOpt, SetOpt,
                              TensorBoardOpt, choices, console, console_progress, emit_result, handle_errors,
                              seed_option, store_for)
from dydis.config import TrainVQGANConfig, build_config

Preset = choices(TrainVQGANConfig, "preset")


@handle_errors
def train_vqgan(
    data: Annotated[Optional[str], typer.Option(metavar="ARTIFACT", help="Dataset artifact: path, stage/name or stage/name@vN.",
                                                show_default=False)] = None,
    preset: Annotated[Optional[Preset], typer.Option(help="Model size [default: paper].",
                                                  show_default=False)] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Training length in optimiser updates, one batch each; or --epochs.",
                                                     show_default=False)] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Training length in passes over the data; or --max-steps.",
                                                    show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per process per micro-batch [default: 128].",
                                                      show_default=False)] = None,
    gpus: Annotated[Optional[int], typer.Option(help="0 = CPU; N = one DDP process per GPU [default: 0].", show_default=False)] = None,
    lpips_vgg: Annotated[Optional[Path], typer.Option(help="torchvision vgg16-397923af.pth for LPIPS.",
                                                      show_default=False)] = None,
    lpips_heads: Annotated[Optional[Path], typer.Option(help="LPIPS v0.1 vgg.pth (linear heads).",
                                                        show_default=False)] = None,
    lpips: Annotated[Optional[bool], typer.Option("--lpips/--no-lpips", help="The perceptual loss [default: on; "
                                                  "--preset paper without its weights is an error, the smaller "
                                                  "presets train without it with a warning].",
                                                  show_default=False)] = None,
    resume: ResumeOpt = False,
    restart: RestartOpt = False,
    runs: RunsOpt = Path("runs"),
    tensorboard: TensorBoardOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    root: RootOpt = None,
    name: NameOpt = None,
    seed: seed_option(TrainVQGANConfig) = None,
    debug: DebugOpt = False,
) -> None:
    """Train the first-stage VQ-GAN (Table 7) and cache the dataset's latents for train-ldm.

    Prints the vqgan artifact path on stdout. Example:

      dydis train-vqgan --data prepare-data/synthetic --preset tiny --max-steps 200
    """
    from dydis.stages import train_vqgan as stage  # deferred: imports torch

    flags = dict(data=data, preset=preset, max_steps=max_steps, epochs=epochs, batch_size=batch_size, gpus=gpus,
                 lpips_vgg=str(lpips_vgg) if lpips_vgg else None, lpips_heads=str(lpips_heads) if lpips_heads else None,
                 lpips=lpips, seed=seed)
    cfg = build_config(TrainVQGANConfig, file=config, flags=flags, overrides=set_)
    artifact = stage.run(cfg, store_for(root), name=name, runs_dir=runs, resume=resume, restart=restart,
                         progress=console_progress(), tensorboard=tensorboard)
    if artifact is None:  # a torchrun rank other than 0: rank 0 publishes
        return
    r = artifact.results
    console.print(f"[green]wrote[/] {artifact.ref}: PSNR {r['psnr']:.2f} dB on {r['holdout_images']} held-out images, "
                  f"{r['codes_used']} codes used (perplexity {r['perplexity']:.1f}), {r['steps']} steps",
                  highlight=False)
    emit_result(artifact.path)
