"""End-of-run report: PNG plots from metrics.jsonl (loss, learning rate, validation metrics) and a confusion
matrix per single-label field from the task's last evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fashiontune.eval.plots import confusion_png, pyplot, save_png


def plot_curves(records: list[dict], out_dir: Path) -> list[Path]:
    plt = pyplot()
    written: list[Path] = []
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    if train:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        steps = [r["step"] for r in train]
        axes[0].plot(steps, [r.get("loss") if r.get("loss") is not None else np.nan for r in train], label="train")
        if val and any(r.get("loss") is not None for r in val):
            axes[0].plot([r["step"] for r in val], [r.get("loss") if r.get("loss") is not None else np.nan
                                                    for r in val], "o-", label="val")
        axes[0].set(xlabel="step", ylabel="loss", title="loss")
        axes[0].legend()
        axes[1].plot(steps, [r.get("lr", np.nan) for r in train])
        axes[1].set(xlabel="step", ylabel="lr", title="learning rate")
        written.append(save_png(fig, out_dir / "loss.png", dpi=80))
    keys = sorted({k for r in val for k, v in r.items()
                   if isinstance(v, (int, float)) and k not in ("step", "epoch", "loss", "count", "samples")
                   and not k.endswith("count")})
    if val and keys:
        n = len(keys)
        cols = min(n, 4)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
        for ax, k in zip(axes.flat, keys):
            ax.plot([r["step"] for r in val], [r.get(k) if r.get(k) is not None else np.nan for r in val], "o-")
            ax.set(title=k, xlabel="step")
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        written.append(save_png(fig, out_dir / "metrics.png", dpi=80))
    return written


def plot_confusion(last_eval: dict[str, Any], out_dir: Path, max_classes: int = 60) -> list[Path]:
    """One confusion matrix per single-label field of the last validation (drawn like the eval job's)."""
    from sklearn.metrics import confusion_matrix

    written: list[Path] = []
    for field, ev in (last_eval or {}).items():
        if not isinstance(ev, dict) or ev.get("multi") or "y_true" not in ev or "vocab" not in ev:
            continue
        vocab = list(ev["vocab"])
        if len(vocab) > max_classes or len(ev["y_true"]) == 0:
            continue
        cm = confusion_matrix(np.asarray(ev["y_true"]), np.asarray(ev["y_pred"]), labels=list(range(len(vocab))))
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in field)
        written.append(confusion_png(cm, vocab, out_dir / f"confusion_{safe}.png",
                                     title=f"validation confusion: {field} (row-normalised)"))
    return written
