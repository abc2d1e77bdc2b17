"""`dydis visualize`: an ldm artifact -> a viz artifact holding one of the paper's figures."""

from __future__ import annotations

import logging
from typing import Annotated, Optional

import typer

from dydis.cli.common import (ConfigOpt, DebugOpt, GpusOpt, RootOpt, SetOpt, choices, console, console_progress,
                              emit_result, handle_errors, seed_option, store_for)
from dydis.config import VisualizeConfig, build_config
from dydis.errors import ConfigError

Figure = choices(VisualizeConfig, "what")
Embedding = choices(VisualizeConfig, "embedding")


@handle_errors
def visualize(
    what: Annotated[Optional[Figure], typer.Argument(metavar="WHAT", help="The figure.",
                                                  show_default=False)] = None,
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", metavar="ARTIFACT", help="ldm artifact: path, stage/name or stage/name@vN; repeat to compare runs (curves).",
        show_default=False)] = None,
    data: Annotated[Optional[str], typer.Option(metavar="ARTIFACT", help="Dataset artifact to take images from [default: the model's "
                                                     "training data].", show_default=False)] = None,
    pairs: Annotated[Optional[int], typer.Option(help="Source/target pairs (interchange, interpolate) [default: 4].",
                                                 show_default=False)] = None,
    images: Annotated[Optional[int], typer.Option(help="Images, one row each (attention) [default: 4].",
                                                  show_default=False)] = None,
    frames: Annotated[Optional[int], typer.Option(help="Images on each interpolation line between two images, both ends "
                                                       "included [default: 8].", show_default=False)] = None,
    points: Annotated[Optional[int], typer.Option(help="Images embedded in the units plot [default: 2000].",
                                                  show_default=False)] = None,
    ddim_steps: Annotated[Optional[int], typer.Option(help="DDIM sampler steps per generated image, eta 0 [default: 100].",
                                                      show_default=False)] = None,
    embedding: Annotated[Optional[Embedding], typer.Option(
        help="Units plot: auto = PaCMAP if installed, else PCA [default: auto].",
                                                     show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per DDIM batch [default: 64].",
                                                      show_default=False)] = None,
    gpus: GpusOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    root: RootOpt = None,
    name: Annotated[Optional[str], typer.Option(metavar="NAME", help="Artifact name [default: <model name>-<what>].",
                                                show_default=False)] = None,
    seed: seed_option(VisualizeConfig) = None,
    debug: DebugOpt = False,
    steps: Annotated[Optional[int], typer.Option("--steps", hidden=True, help="The old name of --frames.",
                                                 show_default=False)] = None,
) -> None:
    """Draw a figure of the paper from an ldm artifact into a viz artifact (WHAT.png).

    interchange (Figs. 3, 8): one unit of a source swapped for a target's, same noise per pair.
    attention (Figs. 4, 9, 10): each unit's cross-attention over layers, heads and DDIM steps.
    interpolate (Fig. 6): units mixed linearly between two images. units (Figs. 1, 11): per
    factor, the unit with the highest NMI, embedded with its DyGA anchors. curves (Fig. 7): loss
    and anchors per unit over epochs. Prints the viz artifact path on stdout. Examples:

      dydis visualize interchange --model train-ldm/shapes3d --pairs 6 --gpus 1

      dydis visualize curves --model train-ldm/a --model train-ldm/b
    """
    from dydis.stages import visualize as stage  # deferred: imports torch and matplotlib

    if steps is not None:  # --frames was --steps, which read like the sampler's steps (--ddim-steps)
        if frames is not None:
            raise ConfigError("--steps and --frames: one setting under two names; keep --frames")
        logging.getLogger("dydis").warning("--steps is renamed --frames (images on each interpolation line; "
                                           "--ddim-steps counts the sampler's steps); the old name goes in the "
                                           "next release")
        frames = steps
    flags = dict(what=what, models=model, data=data, pairs=pairs, images=images, frames=frames, points=points,
                 ddim_steps=ddim_steps, embedding=embedding, batch_size=batch_size, gpus=gpus, seed=seed)
    cfg = build_config(VisualizeConfig, file=config, flags=flags, overrides=set_)
    artifact = stage.run(cfg, store_for(root), name=name, progress=console_progress())
    console.print(f"[green]wrote[/] {artifact.ref}: {artifact.results['figure']} in {artifact.results['seconds']} s",
                  highlight=False)
    emit_result(artifact.path)
