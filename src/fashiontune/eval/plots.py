"""PNG reports: confusion matrix and a grid of top-K retrieved images (matplotlib, Agg backend: no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def pyplot():
    """matplotlib.pyplot on the Agg backend: cluster nodes and CI have no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path, dpi: int) -> Path:
    """Lay out, write (creating the folder) and close `fig`; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def confusion_png(cm: np.ndarray | list, class_names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (rows = true class), raw counts in the cells when it is small."""
    plt = pyplot()
    cm = np.asarray(cm, dtype=np.float64)
    n = len(class_names)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    side = min(24.0, max(4.0, 0.28 * n + 2))
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fs = max(3, min(9, int(240 / max(n, 1))))
    ax.set_xticks(range(n), labels=list(class_names), rotation=90, fontsize=fs)
    ax.set_yticks(range(n), labels=list(class_names), fontsize=fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=fs,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title or "confusion matrix (row-normalised)")
    return save_png(fig, path, dpi=100)


def topk_grid_png(
    rows: Sequence[tuple[str, Sequence[tuple[object, str, bool]]]], path: str | Path, title: str = ""
) -> Path:
    """One row per query: (query text, [(PIL image or None, caption, relevant), ...]); relevant hits get a
    green frame, others red."""
    plt = pyplot()
    n_rows = max(1, len(rows))
    n_cols = max([len(r[1]) for r in rows] + [1])
    fig, axes = plt.subplots(n_rows, n_cols + 1, figsize=(1.8 * (n_cols + 1), 2.0 * n_rows), squeeze=False)
    for r, (query, hits) in enumerate(rows):
        axes[r][0].axis("off")
        axes[r][0].text(0, 0.5, _wrap(query, 22), fontsize=7, va="center", transform=axes[r][0].transAxes)
        for c in range(n_cols):
            ax = axes[r][c + 1]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(hits):
                ax.axis("off")
                continue
            img, caption, relevant = hits[c]
            if img is not None:
                ax.imshow(np.asarray(img))
            for side in ax.spines.values():
                side.set_edgecolor("tab:green" if relevant else "tab:red")
                side.set_linewidth(3)
            ax.set_title(f"{c + 1}. {_wrap(caption, 18, 2)}", fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_png(fig, path, dpi=90)


def _wrap(text: str, width: int, max_lines: int = 6) -> str:
    words, lines, cur = str(text).split(), [], ""
    for w in words:
        if len(cur) + len(w) + 1 > width and cur:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    if cur:
        lines.append(cur)
    return "\n".join(lines[:max_lines]) + ("…" if len(lines) > max_lines else "")
