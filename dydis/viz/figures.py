"""The figures of ``dydis visualize`` as PNG files: labelled image tables, attention overlays,
unit scatter plots and training curves. Only this module of ``dydis.viz`` draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from einops import rearrange
from matplotlib.colors import BoundaryNorm, Colormap, ListedColormap
from matplotlib.ticker import MaxNLocator

from dydis.data.preview import image_grid
from dydis.plots import plt  # the non-interactive backend is chosen there, before pyplot loads
from dydis.viz.curves import RunCurves
from dydis.viz.units import UnitPanel

GAP = 2  # pixels between the images of a table
CELL_INCHES = 0.75  # at DPI this shows a 64-pixel image at about its own size
DPI = 100


def image_table(cells: np.ndarray, path: Path, *, row_labels: list[str], col_labels: list[str], title: str) -> None:
    """Images (rows, cols, h, w, 3) uint8 as one table with a label beside each row and above
    each column; one tiled image, so that a table of hundreds of cells stays one cheap draw."""
    rows, cols, h, w, _ = cells.shape
    sheet = image_grid(rearrange(cells, "r c h w x -> (r c) h w x"), columns=cols, gap=GAP)
    width = max(4.5, 1.4 + cols * CELL_INCHES)  # why: room for the two title lines over a narrow table
    fig, ax = plt.subplots(figsize=(width, 1.1 + rows * CELL_INCHES))
    ax.imshow(sheet, interpolation="nearest")
    ax.set_xticks(GAP + np.arange(cols) * (w + GAP) + w / 2, col_labels, fontsize=7)
    ax.set_yticks(GAP + np.arange(rows) * (h + GAP) + h / 2, row_labels, fontsize=7)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=9, pad=14)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def interchange_table(sources: np.ndarray, targets: np.ndarray, cells: np.ndarray, path: Path, title: str) -> None:
    """The paper's layout (Fig. 3): one column per pair; rows source, target, the sample from the
    source's own units, then the source with unit k from the target. cells: (p, N + 1, h, w, 3)."""
    n_units = cells.shape[1] - 1
    table = np.concatenate([sources[:, None], targets[:, None], cells], axis=1)
    image_table(rearrange(table, "p k h w c -> k p h w c"), path,
                row_labels=["source", "target", "all source units", *[f"unit {k} ← target" for k in range(n_units)]],
                col_labels=[f"pair {i}" for i in range(len(sources))], title=title)


def interpolation_table(starts: np.ndarray, ends: np.ndarray, cells: np.ndarray, path: Path, title: str) -> None:
    """One row per pair: image A, the samples at mixing weights 0 .. 1, image B. cells: (p, s, h, w, 3)."""
    weights = np.linspace(0.0, 1.0, cells.shape[1])
    table = np.concatenate([starts[:, None], cells, ends[:, None]], axis=1)
    image_table(table, path, row_labels=[f"pair {i}" for i in range(len(starts))],
                col_labels=["image A", *[f"w={w:.2f}" for w in weights], "image B"], title=title)


def overlay_maps(images: np.ndarray, maps: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Heat maps (b, N, h, w) in [0, 1] blended over images (b, h, w, 3) uint8 with the jet
    colour map, as DAAM shows them -> (b, N, h, w, 3) uint8."""
    colours = plt.get_cmap("jet")(maps)[..., :3] * 255.0  # (b, N, h, w, 3)
    blended = (1 - alpha) * images[:, None].astype(np.float64) + alpha * colours
    return blended.round().clip(0, 255).astype(np.uint8)


def attention_table(images: np.ndarray, regenerated: np.ndarray, maps: np.ndarray, path: Path, title: str) -> None:
    """One row per image: the image, its DDIM regeneration, then each unit's map over the image.
    maps: (b, N, h, w) in [0, 1]."""
    table = np.concatenate([images[:, None], regenerated[:, None], overlay_maps(images, maps)], axis=1)
    image_table(table, path, row_labels=[f"image {i}" for i in range(len(images))],
                col_labels=["image", "DDIM", *[f"unit {k}" for k in range(maps.shape[1])]], title=title)


def unit_scatter(panels: list[UnitPanel], path: Path, *, method: str, title: str) -> None:
    """One panel per factor: its best unit's embedded features coloured by the factor's class,
    the unit's DyGA anchors as black crosses."""
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    axis_name = "PaCMAP" if method == "pacmap" else "PC"
    for ax, panel in zip(axes.flat, panels):
        classes = int(panel.values.max()) + 1
        cmap, norm = _class_colours(classes)
        dots = ax.scatter(panel.points[:, 0], panel.points[:, 1], c=panel.values, cmap=cmap, norm=norm, s=5,
                          alpha=0.7, linewidths=0)
        if len(panel.anchors):
            ax.scatter(panel.anchors[:, 0], panel.anchors[:, 1], marker="X", s=70, c="black", edgecolors="white",
                       linewidths=0.8, label=f"DyGA anchors ({len(panel.anchors)})")
            ax.legend(fontsize=7, loc="best")
        bar = fig.colorbar(dots, ax=ax, fraction=0.05, ticks=_class_ticks(classes))
        bar.set_label(f"{panel.factor} class", fontsize=7)
        bar.ax.tick_params(labelsize=6)
        ax.set_title(f"{panel.factor}: unit {panel.unit} (NMI {panel.nmi:.2f})", fontsize=9)
        ax.set_xlabel(f"{axis_name} 1", fontsize=7)
        ax.set_ylabel(f"{axis_name} 2", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI + 10)
    plt.close(fig)


def _class_colours(classes: int) -> tuple[Colormap, BoundaryNorm]:
    """One distinct colour per factor class: the qualitative tab10 / tab20 while they suffice,
    else viridis cut into ``classes`` steps (ordered factors such as orientation read well on it)."""
    if classes <= 20:
        cmap = ListedColormap(plt.get_cmap("tab10" if classes <= 10 else "tab20").colors[:classes])
    else:
        cmap = plt.get_cmap("viridis").resampled(classes)
    return cmap, BoundaryNorm(np.arange(classes + 1) - 0.5, classes)


def _class_ticks(classes: int) -> np.ndarray:
    """Integer class ticks, at most about ten of them."""
    return np.arange(0, classes, max(1, -(-classes // 10)))


def training_curves(runs: list[RunCurves], path: Path, title: str) -> None:
    """First row: the loss of every run against the epoch, the feature extractor's gradient
    norm, eq. (6)'s mean delta and the share of (sample, unit) pairs with delta < 1e-3 (runs
    that aligned). Then, for each run with DyGA rounds, a map of the anchors per unit (units
    down, rounds across, the count written in each cell); then, when runs were evaluated while
    training, one panel per score, one line per run, on [0, 1]; last, a row per per-factor
    measure (DCI's test accuracy, the conditioning gain), one panel per factor, one line per run."""
    with_rounds = [run for run in runs if len(run.anchors)]
    score_names = list(dict.fromkeys(name for run in runs for name in run.scores))
    measures = {measure: list(dict.fromkeys(f for run in runs for f in run.factor_scores.get(measure, {})))
                for measure in dict.fromkeys(m for run in runs for m in run.factor_scores)}
    panels = [("loss", "training loss", False), ("grad_norm", "extractor gradient norm", True),
              ("delta_mean", "mean delta (eq. 6)", False), ("delta_small", "share of delta < 1e-3", False)]
    columns = max(len(panels), len(with_rounds), len(score_names), *map(len, measures.values()))
    n_rows = 1 + bool(with_rounds) + bool(score_names) + len(measures)
    fig, axes = plt.subplots(n_rows, columns, figsize=(4.2 * columns, 3.4 * n_rows), squeeze=False)
    for ax, (field, name, log_scale) in zip(axes[0], panels):
        for run in runs:
            values = getattr(run, field)
            if np.isfinite(values).any():
                ax.plot(run.epochs, values, lw=1.2, label=run.label)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        if log_scale and ax.lines:
            ax.set_yscale("log")
        if ax.lines:
            ax.legend(fontsize=6)
    used = [len(panels)]
    if with_rounds:
        for ax, run in zip(axes[1], with_rounds):
            _anchor_map(ax, run)
        used.append(len(with_rounds))
    score_rows = axes[1 + bool(with_rounds):]
    if score_names:
        for ax, name in zip(score_rows[0], score_names):
            _score_panel(ax, [(run, run.scores.get(name)) for run in runs], name)
        used.append(len(score_names))
    for row, (measure, factors) in zip(score_rows[bool(score_names):], measures.items()):
        for ax, factor in zip(row, factors):
            _score_panel(ax, [(run, run.factor_scores.get(measure, {}).get(factor)) for run in runs],
                         f"{measure}: {factor}")
        used.append(len(factors))
    for row, count in zip(axes, used):
        for ax in row[count:]:
            ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI + 10)
    plt.close(fig)


def _score_panel(ax, lines: list[tuple[RunCurves, np.ndarray | None]], name: str) -> None:
    """One score on [0, 1] against the epoch, one line per run that has it."""
    for run, values in lines:
        if values is not None:
            ax.plot(run.score_epochs, values, lw=1.2, marker="o", markersize=3, label=run.label)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epoch", fontsize=8)
    ax.set_title(f"{name} (while training, subsample)", fontsize=9)
    ax.tick_params(labelsize=7)


def _anchor_map(ax, run: RunCurves) -> None:
    """Anchors per unit (rows) after each DyGA round (columns); counts are written in while they fit."""
    counts = run.anchors.T  # (N, n_rounds)
    n_units, n_rounds = counts.shape
    image = ax.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    if n_units * n_rounds <= 400:
        for (unit, round_index), k in np.ndenumerate(counts):
            ax.text(round_index, unit, str(k), ha="center", va="center", fontsize=6,
                    color="white" if k < counts.max() * 0.6 else "black")
    shown = np.unique(np.linspace(0, n_rounds - 1, min(n_rounds, 8)).round().astype(int))
    ax.set_xticks(shown, [f"{run.round_epochs[i]:g}" for i in shown], fontsize=7)
    ax.set_yticks(range(n_units), [f"unit {u}" for u in range(n_units)], fontsize=6)
    ax.set_xlabel("epoch of the DyGA round", fontsize=8)
    ax.set_title(f"anchors per unit: {run.label}", fontsize=8)
    bar = ax.figure.colorbar(image, ax=ax, fraction=0.05, ticks=MaxNLocator(integer=True))
    bar.set_label("anchors", fontsize=7)
    bar.ax.tick_params(labelsize=6)
