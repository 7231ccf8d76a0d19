"""The report's figures (matplotlib, Agg), each written as PNG and SVG beside it, atomically."""
from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from core.atomic import atomic_write_bytes


@contextmanager
def figure(path: Path, title: str, size: tuple[float, float], ncols: int = 1,
           nrows: int = 1) -> Iterator[Any]:
    """Axes (one, or a grid of ``nrows`` × ``ncols``) whose figure is titled, laid out and saved
    to ``path`` (PNG) and ``path.with_suffix('.svg')``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(nrows, ncols, figsize=size)
    try:
        yield axes
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        for target, fmt in ((path, "png"), (path.with_suffix(".svg"), "svg")):
            buf = io.BytesIO()
            fig.savefig(buf, dpi=110, format=fmt)
            atomic_write_bytes(target, buf.getvalue())
    finally:
        plt.close(fig)


def confusion_png(cm: list[list[int]], classes: list[str], title: str, path: Path) -> None:
    cm_arr = np.asarray(cm, dtype=float)
    norm = cm_arr / np.maximum(cm_arr.sum(1, keepdims=True), 1)
    extra = 0.45 * max(0, len(classes) - 4)  # room for more classes
    with figure(path, title, (4.2 + extra, 3.8 + extra)) as ax:
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, f"{int(cm_arr[i, j])}\n{100 * norm[i, j]:.0f}%", ha="center",
                        va="center", fontsize=8, color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=30)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")


def alpha_png(weights: np.ndarray, title: str, path: Path) -> None:
    """Layer weights (folds, L) as deviation from uniform (1/L): mean bars, per-fold dots, an axis
    symmetric about 0 so that small differences are visible and their sign is clear."""
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    dev = 100 * (w - 1.0 / w.shape[1])  # percentage points
    layers = np.arange(w.shape[1])
    with figure(path, title, (6.4, 3.0)) as ax:
        ax.bar(layers, dev.mean(0), color="tab:blue", alpha=0.6)
        for row in dev:
            ax.plot(layers, row, "o", color="black", markersize=3)
        lim = max(1e-3, float(np.abs(dev).max())) * 1.15
        ax.set_ylim(-lim, lim)
        ax.axhline(0, color="gray", linewidth=0.8)
        ax.set_xticks(layers)
        ax.set_xlabel("layer (0 = CNN projection / embeddings)")
        ax.set_ylabel(f"weight − 1/{w.shape[1]} (points)")


def curves_png(history: Mapping[str, Sequence[Mapping[str, float]]], title: str, path: Path) -> None:
    """Training loss and validation UA against the step, one line per fold."""
    with figure(path, title, (8.0, 3.0), ncols=2) as (ax_loss, ax_ua):
        for fold, rows in history.items():
            steps = [r["step"] for r in rows]
            ax_loss.plot(steps, [r.get("loss", np.nan) for r in rows], label=fold)
            if any("val_ua" in r for r in rows):
                ax_ua.plot(steps, [100 * r.get("val_ua", np.nan) for r in rows], label=fold)
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("training loss")
        ax_ua.set_xlabel("step")
        ax_ua.set_ylabel("validation UA (%)")
        ax_ua.legend(fontsize=7, title="fold", title_fontsize=7)
