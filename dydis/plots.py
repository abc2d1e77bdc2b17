"""Figures written into artifacts (PNG), drawn with matplotlib's non-interactive backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # why: no display on training machines; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402


def loss_curves(rows: list[dict], columns: list[str], path: Path, title: str) -> None:
    """One panel per column against the step."""
    present = [c for c in columns if any(c in r for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(present)), figsize=(3.2 * max(1, len(present)), 2.8), squeeze=False)
    steps = [float(r["step"]) for r in rows]
    for ax, column in zip(axes[0], present):
        ax.plot(steps, [float(r.get(column, "nan") or "nan") for r in rows], lw=1.2)
        ax.set_title(column, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
