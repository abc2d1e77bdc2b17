"""`dydis train-ldm`: dataset + vqgan artifacts -> an ldm artifact (extractor, EMA U-Net, anchors)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from dydis.cli.common import (ConfigOpt, DebugOpt, NameOpt, RestartOpt, ResumeOpt, RootOpt, RunsOpt, SetOpt,
                              TensorBoardOpt, choices, console, console_progress, emit_result, handle_errors,
                              seed_option, store_for)
from dydis.config import DyGARunConfig, TrainLDMConfig, build_config
from dydis.errors import ConfigError

Preset = choices(TrainLDMConfig, "preset")
DyGAMode = choices(DyGARunConfig, "mode")
Quantizer = choices(TrainLDMConfig, "quantizer")


def _levels(text: str | None) -> Any:
    """``code``, ``paper`` or a comma list of ds values such as ``1,2``."""
    if text is None or text in ("code", "paper"):
        return text
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--skip-dropout-levels: expected code, paper or ds values like 1,2; found {text!r}") from None


def _nested(**groups: dict[str, Any]) -> dict[str, Any]:
    """Only the flags that were given, grouped by config section."""
    out = {}
    for section, values in groups.items():
        given = {k: v for k, v in values.items() if v is not None}
        if given:
            out[section] = given
    return out


@handle_errors
def train_ldm(
    dataset: Annotated[Optional[str], typer.Option(metavar="NAME", help="Dataset name: uses the latest prepare-data/NAME and "
                                                        "train-vqgan/NAME and the paper's settings for it.",
                                                   show_default=False)] = None,
    data: Annotated[Optional[str], typer.Option(metavar="ARTIFACT", help="Dataset artifact: path, stage/name or stage/name@vN.",
                                                show_default=False)] = None,
    vqgan: Annotated[Optional[str], typer.Option(metavar="ARTIFACT", help="vqgan artifact trained on that dataset [default: "
                                                      "train-vqgan/<data name>].", show_default=False)] = None,
    preset: Annotated[Optional[Preset], typer.Option(help="Model size [default: paper].",
                                                  show_default=False)] = None,
    latent_units: Annotated[Optional[int], typer.Option(help="N, the number of latent units [default: 20].",
                                                        show_default=False)] = None,
    dyga: Annotated[Optional[bool], typer.Option("--dyga/--no-dyga", help="Dynamic Gaussian Anchoring "
                                                 "[default: on]; --no-dyga = --quantizer none.",
                                                 show_default=False)] = None,
    dyga_mode: Annotated[Optional[DyGAMode], typer.Option(
        help="The paper's DyGA or the released code's (official) [default: paper].",
                                                     show_default=False)] = None,
    dyga_every: Annotated[Optional[int], typer.Option(help="r: epochs between anchor rounds [default: 1; cars3d 5].",
                                                      show_default=False)] = None,
    quantizer: Annotated[Optional[Quantizer], typer.Option(
        help="The latent units' quantizer [default: dyga].", show_default=False)] = None,
    lambda_: Annotated[Optional[float], typer.Option("--lambda", help="DyGA alignment factor lambda [default: 0.1].",
                                                     show_default=False)] = None,
    skip_dropout: Annotated[Optional[float], typer.Option(help="Skip Dropout rate; 0 = off [default: 0.2].",
                                                          show_default=False)] = None,
    skip_dropout_levels: Annotated[Optional[str], typer.Option(metavar="[code|paper|DS,DS...]", help="code (the authors' levels), paper, or ds values "
                                                                    "like 1,2 [default: code].",
                                                               show_default=False)] = None,
    backbone_dropout: Annotated[Optional[float], typer.Option(help="Backbone dropout rate (Table 12) [default: 0].",
                                                              show_default=False)] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Training length in optimiser updates, one batch each; or --epochs.",
                                                     show_default=False)] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Training length in passes over the data; or --max-steps.",
                                                    show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per process [default: 512; celeba 64].",
                                                      show_default=False)] = None,
    gpus: Annotated[Optional[int], typer.Option(help="0 = CPU; N = one DDP process per GPU [default: 0].", show_default=False)] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="Every N steps and at the last, FactorVAE / DCI / MIG of the "
                                                           "extractor on a fixed subsample (--set eval_rows=2000, "
                                                           "eval_metrics) into train_log.csv and disentanglement.png; "
                                                           "needs factors [default: 0 = off].",
                                                      show_default=False)] = None,
    compile_: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the U-Net.",
                                                     show_default=False)] = None,
    resume: ResumeOpt = False,
    restart: RestartOpt = False,
    runs: RunsOpt = Path("runs"),
    tensorboard: TensorBoardOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    root: RootOpt = None,
    name: NameOpt = None,
    seed: seed_option(TrainLDMConfig) = None,
    debug: DebugOpt = False,
) -> None:
    """Train the latent diffusion model with the feature extractor, DyGA and Skip Dropout.

    Prints the ldm artifact path on stdout. Examples:

      dydis train-ldm --dataset cars3d --gpus 1 --epochs 500

      dydis train-ldm --data prepare-data/synthetic --preset tiny --epochs 2 --latent-units 6

    The EncDiff baseline is --no-dyga --skip-dropout 0. Several nodes: start it on each node
    with torchrun --no-python ... dydis train-ldm --gpus <GPUs per node>.
    """
    from dydis.stages import train_ldm as stage  # deferred: imports torch

    if dyga is not None and quantizer is not None and (quantizer == "dyga") != dyga:
        raise ConfigError(f"--{'dyga' if dyga else 'no-dyga'} contradicts --quantizer {quantizer}")
    if dyga is not None and quantizer is None:
        quantizer = "dyga" if dyga else "none"
    flags = dict(dataset=dataset, data=data, vqgan=vqgan, preset=preset, quantizer=quantizer, max_steps=max_steps,
                 epochs=epochs, batch_size=batch_size, gpus=gpus, compile=compile_, eval_every=eval_every, seed=seed,
                 **_nested(feature_extractor={"latent_units": latent_units},
                           dyga={"mode": dyga_mode, "every": dyga_every, "lam": lambda_},
                           unet={"skip_dropout": skip_dropout, "skip_dropout_levels": _levels(skip_dropout_levels),
                                 "backbone_dropout": backbone_dropout}))
    cfg = build_config(TrainLDMConfig, file=config, flags=flags, overrides=set_)
    artifact = stage.run(cfg, store_for(root), name=name, runs_dir=runs, resume=resume, restart=restart,
                         progress=console_progress(), tensorboard=tensorboard)
    if artifact is None:  # a torchrun rank other than 0: rank 0 publishes
        return
    r = artifact.results
    anchors = f", anchors per unit {r['anchors_per_unit']}" if r["anchors_per_unit"] else ""
    took = f"{r['train_seconds']:.0f} s" if r["train_seconds"] is not None else "a time not recorded before resuming"
    console.print(f"[green]wrote[/] {artifact.ref}: {r['steps']} steps ({r['epochs']} epochs) in "
                  f"{took}, final loss {r['final_loss']:.4f}, DyGA rounds: {r['dyga_rounds']}"
                  f"{anchors}", highlight=False)
    emit_result(artifact.path)
