"""Figures written into artifacts (PNG), drawn with matplotlib's non-interactive backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # why: no display on training machines; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402


def loss_curves(rows: list[dict], columns: list[str], path: Path, title: str, *, scores: tuple[str, ...] = (),
                marker: str | None = None) -> None:
    """One panel per column against the step; the ``scores`` columns on a fixed [0, 1] axis, so
    a small change does not fill the panel."""
    present = [c for c in columns if any(c in r for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(present)), figsize=(3.2 * max(1, len(present)), 2.8), squeeze=False)
    steps = [float(r["step"]) for r in rows]
    for ax, column in zip(axes[0], present):
        ax.plot(steps, [float(r.get(column, "nan") or "nan") for r in rows], lw=1.2, marker=marker, markersize=3)
        if column in scores:
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(column, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def factor_curves(rows: list[dict], panels: dict[str, dict[str, str]], path: Path, title: str) -> None:
    """Per-factor columns of the evaluated log ``rows`` against the step, on [0, 1]: one panel per
    entry of ``panels`` (its y label -> {factor name: column}), one line per factor."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.2), squeeze=False)
    steps = [float(r["step"]) for r in rows]
    for ax, (ylabel, columns) in zip(axes[0], panels.items()):
        for label, column in columns.items():
            ax.plot(steps, [float(r.get(column) or "nan") for r in rows], lw=1.2, marker="o", markersize=3,
                    label=label)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def importance_heatmap(importance, factor_names: list[str], path: Path, accuracy=None) -> None:
    """DCI importance matrix (n_codes, n_factors) as a heat map, codes down, factors across; with
    ``accuracy``, each factor's label carries its test accuracy, since a factor the codes do not
    hold spreads its (meaningless) importance over every code."""
    n_codes, n_factors = importance.shape
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * n_factors, 1.0 + 0.3 * n_codes))
    image = ax.imshow(importance, cmap="viridis", aspect="auto")
    labels = factor_names or [str(i) for i in range(n_factors)]
    if accuracy is not None:
        labels = [f"{label} ({acc:.2f})" for label, acc in zip(labels, accuracy)]
    ax.set_xticks(range(n_factors), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n_codes), [str(i) for i in range(n_codes)], fontsize=7)
    ax.set_xlabel("factor (test accuracy)" if accuracy is not None else "factor", fontsize=9)
    ax.set_ylabel("code", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.05)
    ax.set_title("DCI importance", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ratio_bars(ratios: dict[str, tuple[list[float], list[float]]], factor_names: list[str], path: Path,
               title: str) -> None:
    """Grouped bars: per factor, one bar (mean, std error bar) per ratio; a dashed line at 1.

    ``ratios`` maps a label (e.g. "Acc100/Acc10000") to (means, stds), one value per factor.
    """
    n_factors = len(factor_names)
    width = 0.8 / max(1, len(ratios))
    fig, ax = plt.subplots(figsize=(1.6 + 0.7 * n_factors, 3.0))
    for i, (label, (means, stds)) in enumerate(ratios.items()):
        ax.bar([x + (i - (len(ratios) - 1) / 2) * width for x in range(n_factors)], means, width, yerr=stds,
               capsize=2, label=label)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(n_factors), factor_names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy ratio", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def band_curves(curves: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], path: Path, title: str,
                ylabel: str) -> None:
    """One line per (label, steps, mean, std) against the training step, with a band of ± std."""
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    for label, steps, mean, std in curves:
        (line,) = ax.plot(steps, mean, lw=1.4, marker="o", ms=3, label=label)
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel("step", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
